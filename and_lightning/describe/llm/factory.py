"""Build a chat LLM from its Hydra config (`conf/llm/*.yaml`, each with a `_target_`)."""
from __future__ import annotations

from typing import Any

from and_lightning.describe.llm.base import ChatLLM


def build_llm(cfg: Any) -> ChatLLM:
    """Instantiate `cfg` (a DictConfig or dict with `_target_`); check it built a ChatLLM."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        raise ValueError(f"llm config must be a mapping with a _target_ (see conf/llm/*.yaml), got {cfg!r}")
    llm = instantiate(cfg, _convert_="all")
    if not isinstance(llm, ChatLLM):
        raise TypeError(f"llm config _target_ {cfg['_target_']} built a {type(llm).__name__}, not a ChatLLM")
    return llm
