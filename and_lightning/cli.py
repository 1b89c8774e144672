"""The command line of train.py and dissect.py: settings checked before any heavy import, and bad input reported
as ONE line on stderr (exit status 1) instead of a traceback. `HYDRA_FULL_ERROR=1` keeps every traceback."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Optional

from hydra.errors import HydraException, InstantiationException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError

log = logging.getLogger(__name__)


class _Settings(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")  # strict: "3" is not an int, True is not an int


class _Data(_Settings):  # defaults: AudioDataModule's
    batch_size: PositiveInt = 32
    num_workers: NonNegativeInt = 0
    sample_rate: PositiveInt = 16000
    clip_seconds: PositiveFloat = 1.0
    num_classes: Optional[PositiveInt] = None


class _Describe(_Settings):
    k: PositiveInt = 5


class _Trainer(_Settings):
    max_epochs: Optional[int] = Field(None, ge=-1)


class _Run(_Settings):
    seed: int = 0
    data: _Data
    trainer: Optional[_Trainer] = None
    describe: Optional[_Describe] = None


def check_config(cfg: DictConfig) -> None:
    """Refuse ill-typed or out-of-range values of the settings every run reads (ValueError naming the field and
    what it expects); values still `???` are left to the code that needs them."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    try:
        _Run.model_validate(_without_missing(plain))
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{field}={err['input']!r}: {err['msg'].lower()}") from None


def _without_missing(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _without_missing(v) for k, v in x.items() if v != "???"}
    return x


def run_cli(main: Callable[[], Any]) -> None:
    """Call a `@hydra.main` function. Bad input (a wrong setting, file or dataset; a missing checkpoint; a server
    that keeps failing) ends as `error: <one line>` on stderr with exit status 1; a bug keeps its traceback."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing a cut traceback; reported below
    try:
        main()
    except Exception as e:
        if not isinstance(e, _bad_input_types()):
            raise
        message = one_line(e)
        if logging.getLogger().handlers:  # the job's log file (Hydra configures logging once composed)
            log.error(message)
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(1)


# the project's errors that are not ValueError / OSError: (module, class); a module never imported raised none
_OWN_ERRORS = (("and_lightning.models.base", "UnknownLayerError"), ("and_lightning.describe.llm.base", "LLMError"),
               ("and_lightning.store.kvcache", "CacheError"))


def _bad_input_types() -> tuple[type[BaseException], ...]:
    """Errors that describe bad input or an unusable resource (their messages name it), not a bug."""
    own = tuple(getattr(sys.modules[module], name) for module, name in _OWN_ERRORS if module in sys.modules)
    return (ValueError, OSError, OmegaConfBaseException, HydraException) + own


def one_line(e: BaseException) -> str:
    """The message of `e` on one line: the reason, not the wrapper, of Hydra's instantiation errors; the option list
    of its unknown-option errors; the original error of a DataLoader worker's."""
    if isinstance(e, InstantiationException) and isinstance(e.__cause__, _bad_input_types()):
        return one_line(e.__cause__)  # else Hydra's own text: the target, the error and the config key
    if isinstance(e, MissingConfigException) and e.options:
        return f"{_lines(e)[0]}; available: {', '.join(e.options)}"
    text = _join(_lines(e))
    if isinstance(e, OverrideParseException):
        text = f"cannot parse the override {e.override!r}: {_lines(e)[0]}"
    if isinstance(e, HydraException) and isinstance(e.__cause__, OmegaConfBaseException):
        text = f"{text}; {_lines(e.__cause__)[0]}"  # e.g. "Could not override 'x'" + "Key 'x' is not in struct"
    return text


def _lines(e: BaseException) -> list[str]:
    text = str(e)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: its last line is `Type: message`
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("object_type")]
    return lines or [type(e).__name__]


def _join(lines: list[str]) -> str:
    """"a:" + "b" -> "a: b"; "a." + "b" -> "a; b"."""
    text = lines[0]
    for line in lines[1:]:
        text = f"{text} {line}" if text.endswith(":") else f"{text.removesuffix('.')}; {line}"
    return text
