"""Your own model (`model=custom`): any nn.Module, its layers named by module path, through the generic adapter.

The example net (and_lightning/models/examples.py) names the ReLUs after its BatchNorms: the layers resolve to those
BatchNorms (what pruning zeroes), the recorded units equal the ReLU outputs the next layer reads, and a pruned unit
is exactly 0 there with trained-like BatchNorm statistics. Layers that cannot be units are one-line errors; a plain
nn.Module given as model._target_ is a one-line CLI error saying how to use it. Slow: README "Your own model"
through the real CLI (train 1 epoch on a tiny synthetic set, dissect, prune a class).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from and_lightning.checkpoints import build, load_checkpoint
from and_lightning.lit.probe import ProbeModule
from and_lightning.models.examples import TinyAudioNet
from and_lightning.models.generic import GenericAdapter
from and_lightning.models.registry import resolve_layers
from and_lightning.prune.masks import UnitMasks
from conftest import REPO

LAYERS = {"block1": "features.2", "block2": "features.6", "head": "fc"}  # the ReLUs after the BatchNorms, the head
RELUS = {"block1": 2, "block2": 6}
CUSTOM = ["model=custom", "model.net._target_=and_lightning.models.examples.TinyAudioNet",
          "model.layers={block1: features.2, block2: features.6, head: fc}"]
TINY_SYNTH = ["data.index.clips_per_class=5", "data.batch_size=10", "logger=none"]


def example(num_classes: int = 4) -> GenericAdapter:
    """The example net with trained-like BatchNorms (shifts, scales and running statistics far from init)."""
    torch.manual_seed(0)
    net = TinyAudioNet(num_classes)
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(0.2, 0.6)  # β > 0: a unit zeroed before BatchNorm would still emit β - γμ/σ
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.5, 2.0)
    return GenericAdapter(net, LAYERS, num_classes=num_classes).eval()


def noise(n: int = 3) -> torch.Tensor:
    return 0.1 * torch.randn(n, 16000, generator=torch.Generator().manual_seed(1))


def relu_outputs(adapter: GenericAdapter, wave: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the layer after each block reads: the outputs of the named ReLU modules."""
    seen = {}
    handles = [adapter.net.features[i].register_forward_hook(lambda m, a, o, n=name: seen.__setitem__(n, o.clone()))
               for name, i in RELUS.items()]
    try:
        with torch.no_grad():
            seen["head"] = adapter(wave)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_named_activations_resolve_to_the_modules_before_them():
    adapter = example()
    assert adapter.layer_paths() == {"block1": "net.features.1", "block2": "net.features.5", "head": "net.fc"}
    assert adapter.layers() == {"block1": 16, "block2": 32, "head": 4}
    assert adapter.head_path == "net.fc" and adapter.head() is adapter.net.fc
    assert set(adapter.unit_activations()) == {"block1", "block2"}
    assert resolve_layers(adapter, "last") == ["head"] and resolve_layers(adapter, "all") == list(LAYERS)


def test_the_example_config_option_builds_the_same_adapter(compose_in):
    adapter = build(compose_in("train", ["model=tiny_audio_net", "model.net.width=8"]).model)
    assert isinstance(adapter.net, TinyAudioNet) and adapter.net.fc.in_features == 16
    assert adapter.layers() == {"block1": 8, "block2": 16, "head": 10}  # synth: 10 classes


@pytest.mark.parametrize("reduction", ["mean", "max"])
def test_recorded_units_are_what_the_next_layer_reads(reduction):
    adapter, wave = example(), noise()
    expected = relu_outputs(adapter, wave)
    probe = ProbeModule(adapter, list(LAYERS), reduction)
    probe.on_predict_start()
    try:
        with torch.no_grad():
            acts = probe.predict_step({"audio": wave, "clip_id": ["a", "b", "c"]}, 0)["acts"]
    finally:
        probe.on_predict_end()
    for name in RELUS:
        x = expected[name].flatten(2)
        want = x.mean(dim=2) if reduction == "mean" else x.amax(dim=2)
        torch.testing.assert_close(acts[name], want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(acts["head"], expected["head"])


def test_a_pruned_unit_is_exactly_zero_where_the_next_layer_reads_it():
    adapter, wave = example(), noise()
    before = relu_outputs(adapter, wave)
    pruned = {"block1": [3], "block2": [0, 5]}
    with UnitMasks(adapter, pruned):
        after = relu_outputs(adapter, wave)
    for name, units in pruned.items():
        assert before[name][:, units].abs().amax() > 0  # live units before pruning
        assert after[name][:, units].abs().amax() == 0
    kept = [u for u in range(16) if u != 3]
    assert torch.equal(after["block1"][:, kept], before["block1"][:, kept])  # the first pruned layer's others


class Twice(nn.Module):
    """One ReLU module used twice: naming it is ambiguous."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.relu, self.fc = nn.Linear(16000, 8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)

    def forward(self, wave):
        return self.fc(self.relu(self.b(self.relu(self.a(wave)))))


class Squashed(nn.Module):
    """A sigmoid after a Linear: zeroing the Linear leaves 0.5, so the sigmoid cannot be named as the unit."""

    def __init__(self):
        super().__init__()
        self.a, self.act, self.pool, self.fc = nn.Linear(16000, 8), nn.Sigmoid(), nn.Identity(), nn.Linear(8, 3)

    def forward(self, wave):
        return self.fc(self.pool(self.act(self.a(wave))))


@pytest.mark.parametrize("net, layers, num_classes, message", [
    (TinyAudioNet(4), {"block1": "features.9", "head": "fc"}, 4, r"\{'block1': 'features.9'\} name no module"),
    (TinyAudioNet(4), {"head": "fc", "block1": "features.2"}, 4, "forward order"),
    (TinyAudioNet(4), {"pool": "features.3", "head": "fc"}, 4, "'features.3' is a MaxPool2d, neither"),
    (TinyAudioNet(4), {"block1": "features.2", "last": "features.6"}, 4, "must be the classification head"),
    (TinyAudioNet(4), {"block1": "features.2", "head": "fc"}, 5, r"4 units .*model.num_classes=5"),
    (Twice(), {"relu": "relu", "head": "fc"}, 3, "'relu' runs 2 times"),
    (Squashed(), {"act": "act", "head": "fc"}, 3, r"'act' \(Sigmoid\) does not map 0 to 0"),
    (Squashed(), {"pool": "pool", "head": "fc"}, 3, "'pool' is a Identity, neither"),
])
def test_layers_that_cannot_be_units_are_clear_errors(net, layers, num_classes, message):
    with pytest.raises(ValueError, match=message):
        GenericAdapter(net, layers, num_classes=num_classes).layer_paths()


def cli(script: str, root: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(REPO / script), f"paths.root_dir={root}", *overrides], cwd=root,
                          env=env, capture_output=True, text=True, timeout=900)


WRAP_IT = "model=custom model.net._target_=and_lightning.models.examples.TinyAudioNet 'model.layers={"


def test_dissecting_a_plain_module_says_how_to_wrap_it():
    with pytest.raises(ValueError, match="model._target_ built and_lightning.models.examples.TinyAudioNet, not a "
                                         "target adapter") as e:
        resolve_layers(TinyAudioNet(3), "all")
    assert WRAP_IT in str(e.value)


@pytest.mark.slow
def test_training_a_plain_module_says_how_to_wrap_it(tmp_path):
    plain = ["model._target_=and_lightning.models.examples.TinyAudioNet", "~model.channels", "~model.dropout",
             "~model.norm"]
    proc = cli("train.py", tmp_path, [*plain, *TINY_SYNTH])
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and last.startswith("error: model._target_ built "), proc.stderr[-2000:]
    assert WRAP_IT in last


@pytest.mark.slow
def test_readme_custom_model_trains_dissects_and_prunes_through_the_cli(tmp_path):
    """README "Your own model": train 1 epoch on a tiny synthetic set, dissect it, prune one class."""
    train = cli("train.py", tmp_path, [*CUSTOM, *TINY_SYNTH, "trainer.max_epochs=1", "callbacks=none"])
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "synth-custom-scratch-s0.pt")
    assert ckpt["state_dict"]["net.fc.weight"].shape == (10, 32)
    assert ckpt["config"]["model"]["net"]["_target_"] == "and_lightning.models.examples.TinyAudioNet"

    dissect = cli("dissect.py", tmp_path, [*CUSTOM, *TINY_SYNTH])
    assert dissect.returncode == 0, dissect.stderr[-3000:]
    (run_json,) = tmp_path.glob("logs/dissect/runs/*/dissection.json")
    result = json.loads(run_json.read_text())
    assert result["layers"] == ["block1", "block2", "head"]
    records = [json.loads(line) for line in Path(result["descriptions"]).read_text().splitlines()]
    units = {layer: sorted(r["unit"] for r in records if r["layer"] == layer) for layer in result["layers"]}
    assert units == {"block1": list(range(16)), "block2": list(range(32)), "head": list(range(10))}
    assert all(r["description"] and r["closed_concepts"] for r in records)
    assert "dissect/last_layer_top1" in result["metrics"]  # the head is the output layer, scored as Table 2

    prune = cli("train.py", tmp_path, [*CUSTOM, *TINY_SYNTH, "mode=unlearn", "prune=random", "prune.target=noise_hiss",
                                       "prune.like=null", "prune.max_units=6",
                                       f"prune.descriptions={result['descriptions']}"])
    assert prune.returncode == 0, prune.stderr[-3000:]
    (unlearn_json,) = tmp_path.glob("logs/train/runs/*/unlearn_result.json")
    outcome = json.loads(unlearn_json.read_text())
    assert outcome["target"] == "noise_hiss" and outcome["metrics"]["prune/n_pruned"] == 6
    assert set(outcome["units_by_layer"]) <= {"block1", "block2"}  # hidden layers, named as in model.layers
