"""Retraining after pruning (`python train.py prune=... prune.retrain_epochs=N`) runs with every module in training
mode while the masks keep the pruned units at exactly 0, for concept pruning and its random baseline (the same
number of units per layer); checked by a Lightning callback given on the command line like any other."""
from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict

from and_lightning.checkpoints import load_checkpoint
from and_lightning.prune.unlearn import unlearn
from conftest import compose_cfg

LAYERS = ("conv1", "conv2")
TONE_UNITS = {"conv1": [1], "conv2": [2, 5]}  # the units whose (hand-written) descriptions name a tone


class TrainModeCheck(Callback):
    """Records, for the training steps, the modules not in training mode and the largest |value| each conv
    channel sends to its max-pool (where the next layer reads it)."""

    steps = 0
    eval_modules: list[str] = []
    peak: dict[str, torch.Tensor] = {}

    @classmethod
    def reset(cls) -> None:
        cls.steps, cls.eval_modules, cls.peak = 0, [], {}

    def on_train_start(self, trainer, pl_module) -> None:
        net = pl_module.model
        self._handles = [net.get_submodule(f"net.{layer}.pool").register_forward_pre_hook(self._hook(layer))
                         for layer in LAYERS]

    @staticmethod
    def _hook(layer: str):
        def hook(module, args) -> None:
            if module.training:
                peak = args[0].detach().abs().amax(dim=(0, 2, 3))
                old = TrainModeCheck.peak.get(layer)
                TrainModeCheck.peak[layer] = peak if old is None else torch.maximum(old, peak)
        return hook

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        TrainModeCheck.steps += 1
        TrainModeCheck.eval_modules += [name for name, m in pl_module.named_modules() if not m.training]

    def on_train_end(self, trainer, pl_module) -> None:
        for handle in self._handles:
            handle.remove()


def write_descriptions(path, widths: dict[str, int]) -> str:
    rows = [{"layer": layer, "unit": u, "nouns": ["tone"] if u in TONE_UNITS.get(layer, []) else ["noise"]}
            for layer, width in widths.items() for u in range(width)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["concept", "random"])
def test_retraining_trains_every_module_with_the_pruned_units_held_at_zero(trained_cnn, tmp_path, strategy):
    ckpt, root, overrides = trained_cnn
    descriptions = write_descriptions(tmp_path / "descriptions.jsonl", {"conv1": 4, "conv2": 8, "head": 10})
    cfg = compose_cfg("train", root, [*overrides, "logger=none", "callbacks=none", "mode=unlearn", f"prune={strategy}", "prune.target=pure_tone", "prune.words=[tone]",
                                      f"prune.ckpt={ckpt}", f"prune.descriptions={descriptions}",
                                      "prune.check_pairing=false", "prune.retrain_epochs=2",
                                      f"prune.export_ckpt={tmp_path}/unlearned.pt",
                                      "+callbacks.check._target_=test_prune_retrain.TrainModeCheck"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    TrainModeCheck.reset()
    metrics = unlearn(cfg)
    pruned = json.loads((tmp_path / "run" / "unlearn_result.json").read_text())["units_by_layer"]
    assert {k: len(v) for k, v in pruned.items()} == {k: len(v) for k, v in TONE_UNITS.items()}
    if strategy == "concept":
        assert pruned == TONE_UNITS
    assert TrainModeCheck.steps > 0 and TrainModeCheck.eval_modules == []
    for layer in LAYERS:
        kept = [u for u in range(len(TrainModeCheck.peak[layer])) if u not in pruned[layer]]
        assert torch.count_nonzero(TrainModeCheck.peak[layer][pruned[layer]]) == 0, layer
        assert (TrainModeCheck.peak[layer][kept] > 0).all(), layer
    # BatchNorm learned from the retained classes' batches (statistics move only in training mode)
    before, after = (load_checkpoint(p)["state_dict"] for p in (ckpt, tmp_path / "unlearned.pt"))
    assert not torch.equal(before["net.conv2.bn.running_mean"], after["net.conv2.bn.running_mean"])
    assert "retrained/selectivity_prob" in metrics
