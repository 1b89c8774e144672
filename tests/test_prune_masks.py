"""Unit masks zero exactly the chosen units (whole conv channels, Linear features), by index, and hold in training."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from and_lightning.models.base import TargetAdapter, UnknownLayerError
from and_lightning.models.cnn import SmallCNN
from and_lightning.prune.masks import UnitMasks


class FakeTinyMLP(TargetAdapter):
    """A two-Linear adapter on 8-sample 'waveforms' (fast, for Linear masks) with a LayerNorm in between."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 6)
        self.norm = nn.LayerNorm(6)
        self.out = nn.Linear(6, 3)
        self.head_path = "out"

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.fc1(wave)))

    def layer_paths(self) -> dict[str, str]:
        return {"fc1": "fc1", "head": "out"}


def tiny_cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(num_classes=3, n_mels=16, channels=(4, 6), n_fft=256, hop_length=128).eval()


def capture(adapter: TargetAdapter, layer: str, wave: torch.Tensor) -> torch.Tensor:
    """The layer's output as the next module sees it (a hook registered after the masks)."""
    seen = {}
    handle = adapter.layer_module(layer).register_forward_hook(lambda m, i, o: seen.setdefault("out", o.detach()))
    with torch.no_grad():
        adapter(wave)
    handle.remove()
    return seen["out"]


def test_conv_masks_zero_whole_channels_by_index_and_nothing_else():
    model, wave = tiny_cnn(), torch.randn(2, 4000)
    clean = capture(model, "conv2", wave)
    with UnitMasks(model, {"conv2": [1, 4]}) as masks:
        masked = capture(model, "conv2", wave)
        assert masks.count == 2
    assert clean[:, [1, 4]].abs().min() > 0  # the channels did carry signal
    assert torch.count_nonzero(masked[:, [1, 4]]) == 0  # every position of those channels
    keep = [0, 2, 3, 5]
    assert torch.equal(masked[:, keep], clean[:, keep])
    assert torch.equal(capture(model, "conv2", wave), clean)  # removed: the model is back to normal


def test_linear_masks_zero_units_before_the_next_layer():
    model, wave = FakeTinyMLP().eval(), torch.randn(5, 8)
    clean = capture(model, "fc1", wave)
    with UnitMasks(model, {"fc1": [0, 5], "head": [2]}):
        masked = capture(model, "fc1", wave)
        logits = model(wave)
    assert torch.count_nonzero(masked[:, [0, 5]]) == 0 and torch.equal(masked[:, 1:5], clean[:, 1:5])
    assert torch.count_nonzero(logits[:, 2]) == 0 and torch.count_nonzero(logits[:, :2]) == 10


@pytest.mark.parametrize("make,layer,units", [(tiny_cnn, "conv1", [0, 3]), (FakeTinyMLP, "fc1", [2])])
def test_baked_weights_give_the_hooked_outputs(make, layer, units):
    model = make().eval()
    wave = torch.randn(3, 4000 if isinstance(model, SmallCNN) else 8)
    masks = UnitMasks(model, {layer: units}).apply()
    with torch.no_grad():
        hooked = model(wave)
    masks.remove()
    masks.bake()
    weight = model.layer_module(layer).weight
    assert torch.count_nonzero(weight[units]) == 0 and torch.count_nonzero(weight[[i for i in range(weight.shape[0]) if i not in units]]) > 0
    with torch.no_grad():
        assert torch.allclose(model(wave), hooked, atol=1e-6)
    assert torch.count_nonzero(capture(model, layer, wave)[:, units]) == 0


def test_masks_hold_during_training_no_gradient_reaches_pruned_units():
    model = tiny_cnn().train()
    bn, conv = model.layer_module("conv1"), model.net.conv1.conv  # the unit: the channel after BatchNorm (+ ReLU)
    before = conv.weight.detach().clone()
    masks = UnitMasks(model, {"conv1": [2]}).apply()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(2):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.randn(3, 2000)), torch.tensor([0, 1, 2]))
        loss.backward()
        for weights in (conv.weight, bn.weight, bn.bias):
            assert torch.count_nonzero(weights.grad[2]) == 0 and torch.count_nonzero(weights.grad[[0, 1, 3]]) > 0
        opt.step()
    assert torch.equal(conv.weight[2], before[2]) and not torch.equal(conv.weight[0], before[0])
    assert torch.count_nonzero(capture(model.eval(), "conv1", torch.randn(2, 2000))[:, 2]) == 0
    masks.remove()


def test_bad_masks_fail_clearly():
    model = tiny_cnn()
    with pytest.raises(IndexError, match="layer 'conv1' has 4 units; cannot mask units \\[4\\]"):
        UnitMasks(model, {"conv1": [1, 4]})
    with pytest.raises(UnknownLayerError, match="unknown layer 'conv9'"):
        UnitMasks(model, {"conv9": [0]})

    class FakeNormLayer(FakeTinyMLP):
        def layer_paths(self) -> dict[str, str]:
            return {"norm": "norm", "head": "out"}

    with pytest.raises(TypeError, match="layer 'norm' is a LayerNorm"):
        UnitMasks(FakeNormLayer(), {"norm": [0]})
