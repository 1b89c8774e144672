"""Every config in conf/ composes, and the ones that build objects resolve to real classes."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import CONF, compose_cfg


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def user_supplied(option: str) -> list[str]:
    """Values a user must give for some options (`???` in the config)."""
    return ["data.num_classes=3", "data.index.root=/data/mine", "concepts=synth"] if option == "folder" else []


GROUPS = ["data", "model", "strategy", "trainer", "callbacks", "logger", "paths", "debug", "experiment"]
CASES = [(g, o) for g in GROUPS for o in group_options(g)]


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_train_option_composes(tmp_path, group, option):
    cfg = compose_cfg("train", tmp_path, [f"{group}={option}", *user_supplied(option)[:2]])
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert container["data"]["name"] and container["model"]["name"]


DISSECT_GROUPS = ["captioner", "llm", "text_encoder", "concepts", "describe", "data", "model"]
DISSECT_CASES = [(g, o) for g in DISSECT_GROUPS for o in group_options(g)]


@pytest.mark.parametrize("group,option", DISSECT_CASES, ids=[f"{g}={o}" for g, o in DISSECT_CASES])
def test_every_dissect_option_composes(tmp_path, group, option):
    cfg = compose_cfg("dissect", tmp_path, [f"{group}={option}", *user_supplied(option)])
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert container["stage"] == "all" and "_target_" in container["captioner"]


def test_concepts_follow_the_dataset(tmp_path):
    for data in ("synth", "esc50", "urbansound8k", "gtzan"):
        cfg = compose_cfg("dissect", tmp_path, [f"data={data}"])
        assert cfg.concepts.name == data and len(cfg.concepts.concepts) == cfg.data.num_classes


@pytest.mark.parametrize("launcher", ["joblib", "submitit_slurm", "submitit_local", "basic"])
def test_hydra_launchers_compose(tmp_path, launcher):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert launcher.split("_")[0] in cfg.hydra.launcher._target_.lower()


def test_experiment_overrides_groups(tmp_path):
    cfg = compose_cfg("train", tmp_path, ["experiment=ast_tiny_synth"])
    assert cfg.model.name == "ast_tiny" and cfg.data.name == "synth"
