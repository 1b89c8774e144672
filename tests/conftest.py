"""Shared test setup: offline environment, Hydra compose fixtures, W&B kept inside each test's directory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _wandb_dirs(tmp_path, monkeypatch):
    """Every test gets its own W&B data/cache/config dirs (never the user's home)."""
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_env" / var.lower()))


def compose_cfg(config_name: str, root: Path, overrides: list[str] = ()):
    """Compose `config_name` with paths rooted at `root` and a resolvable `${hydra:...}` node."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=[f"paths.root_dir={root}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
        del cfg["hydra"]
    return cfg


@pytest.fixture
def compose_in(tmp_path):
    """compose_in(config_name, overrides) -> a config rooted in this test's tmp_path."""
    return lambda name, overrides=(): compose_cfg(name, tmp_path, list(overrides))


TRAINED_CNN = ["data=synth", "data.index.clips_per_class=8", "data.batch_size=8", "model=cnn", "model.channels=[4,8]"]


@pytest.fixture(scope="session")
def trained_cnn(tmp_path_factory):
    """A tiny SmallCNN trained once per session through `train(cfg)` (3 epochs: BatchNorm statistics learned).

    Returns (checkpoint path, root dir, overrides): `compose_cfg("train" | "dissect", root, overrides)` gives
    the same synthetic data (cached under root) and model config.
    """
    from and_lightning.training import train

    root = tmp_path_factory.mktemp("trained_cnn")
    metrics = train(compose_cfg("train", root, TRAINED_CNN + ["strategy.lr=1e-2", "trainer.max_epochs=3",
                                                              "callbacks=none", "logger=none", "test=false"]))
    GlobalHydra.instance().clear()
    return Path(metrics["checkpoint_path"]), root, list(TRAINED_CNN)
