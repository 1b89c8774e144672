"""Every config in conf/ composes, and every node it would instantiate names a real class or function."""
from __future__ import annotations

from typing import Any, Iterator

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_object
from omegaconf import OmegaConf

from conftest import CONF, compose_cfg


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def user_supplied(option: str) -> list[str]:
    """Values a user must give for some options (`???` in the config)."""
    return {"folder": ["data.num_classes=3", "data.index.root=/data/mine", "concepts=synth"],
            "custom": ["model.net._target_=and_lightning.models.examples.TinyAudioNet",
                       "model.layers={block1: features.2, head: fc}"]}.get(option, [])


def targets(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, `_target_`) of every node of a plain config that `instantiate` would build."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield key, node["_target_"]
        for k, v in node.items():
            yield from targets(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from targets(v, f"{key}[{i}]")


def check_targets(container: dict, group: str) -> None:
    """Every `_target_` imports as a callable, and the group's own node (or its entries) has one."""
    found = dict(targets(container))
    for key, target in found.items():
        if target != "???":  # a class the user names (model=custom)
            assert callable(get_object(target)), f"{key}._target_={target} is not a class or function"
    if group in BUILT and container[group] is not None:  # null: nothing to build (llm=none)
        node = container[group]
        entries = [f"{group}.{e}" for e in node] if group in ("callbacks", "logger") else [group]
        assert all(e in found for e in entries), f"{group}: {entries} need a _target_"


# groups whose option is built with `instantiate` (callbacks, logger: each of their entries is)
BUILT = {"data", "model", "trainer", "callbacks", "logger", "captioner", "llm", "text_encoder"}
GROUPS = ["data", "model", "strategy", "trainer", "callbacks", "logger", "paths", "debug", "experiment"]
CASES = [(g, o) for g in GROUPS for o in group_options(g)]


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_train_option_composes(tmp_path, group, option):
    cfg = compose_cfg("train", tmp_path, [f"{group}={option}", *user_supplied(option)[:2]])
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert container["data"]["name"] and container["model"]["name"]
    check_targets(container, group)


DISSECT_GROUPS = ["captioner", "llm", "text_encoder", "concepts", "describe", "data", "model", "sae", "exemplars"]
DISSECT_CASES = [(g, o) for g in DISSECT_GROUPS for o in group_options(g)]


@pytest.mark.parametrize("group,option", DISSECT_CASES, ids=[f"{g}={o}" for g, o in DISSECT_CASES])
def test_every_dissect_option_composes(tmp_path, group, option):
    cfg = compose_cfg("dissect", tmp_path, [f"{group}={option}", *user_supplied(option)])
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert container["stage"] == "all"
    check_targets(container, group)


def test_sae_options(tmp_path):
    """sae: null by default (neurons only); sae=topk / batchtopk name their kind and share the other settings."""
    assert compose_cfg("dissect", tmp_path).get("sae") is None
    assert compose_cfg("dissect", tmp_path, ["sae=none"]).get("sae") is None
    topk, batch = (compose_cfg("dissect", tmp_path, [f"sae={o}", "seed=3"]).sae for o in ("topk", "batchtopk"))
    assert (topk.kind, batch.kind, topk.seed) == ("topk", "batchtopk", 3)
    assert {k: v for k, v in batch.items() if k != "kind"} == {k: v for k, v in topk.items() if k != "kind"}


def test_concepts_follow_the_dataset(tmp_path):
    for data in ("synth", "synth_two_event", "esc50", "urbansound8k", "gtzan"):
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
