"""Each adapter's time axis (`TargetAdapter.time_curve`): the grid layouts by hand, and on every adapter (tiny
configs) a burst planted at a known time shows up in the frames that cover it; heads have no time axis."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from and_lightning.models.base import per_frame
from and_lightning.models.generic import GenericAdapter
from test_beats import build_from_yaml as build_beats
from test_models import build_from_yaml

SR = 16000
BURST = (0.6, 0.7)  # seconds of the planted burst in a 1 s clip


def test_per_frame_averages_the_frequency_cells_of_each_time_step():
    # 2 freq x 3 time cells; (freq, time) order: cell f*3 + t; (time, freq) order: cell t*2 + f
    view = torch.tensor([[[1.0, 2.0, 3.0, 5.0, 6.0, 7.0]]])
    assert per_frame(view, 3).tolist() == [[[3.0, 4.0, 5.0]]]
    assert per_frame(view, 3, time_major=True).tolist() == [[[1.5, 4.0, 6.5]]]


class ConvNet(nn.Module):
    """A custom net with a waveform conv (time last) and a linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, kernel_size=400, stride=160)
        self.fc = nn.Linear(4, 3)

    def forward(self, wave):
        return self.fc(torch.relu(self.conv(wave[:, None])).mean(dim=2))


ADAPTERS = {  # name -> (adapter builder, a hidden layer, the head or None when every layer has frames)
    "cnn": (lambda: build_from_yaml("cnn"), "conv1", "head"),
    "ast_tiny": (lambda: build_from_yaml("ast_tiny"), "block0.fc1", "head"),
    "beats_tiny": (lambda: build_beats("beats_tiny"), "block0.fc1", "head"),
    "crepe": (lambda: build_from_yaml("crepe"), "conv1", None),
    "custom": (lambda: GenericAdapter(ConvNet(), {"conv": "conv", "head": "fc"}), "conv", "head"),
}


def curves(adapter, layer, wave):
    """(time_curve of `layer`, its unit count) for waveforms [B, T] of 1 s."""
    seen = {}
    handle = adapter.layer_module(layer).register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        adapter.eval()(wave)
    handle.remove()
    return adapter.time_curve(layer, seen["out"], wave.shape[0], 1.0), adapter.layers()[layer]


@pytest.mark.parametrize("which", ["cnn", "ast_tiny", "beats_tiny", "crepe", "custom"])
def test_a_planted_burst_peaks_in_the_frames_that_cover_it(which):
    build, layer, head = ADAPTERS[which]
    torch.manual_seed(0)
    adapter = build()
    g = torch.Generator().manual_seed(0)
    quiet = 0.01 * torch.randn(SR, generator=g)
    burst = quiet.clone()
    burst[int(BURST[0] * SR):int(BURST[1] * SR)] += 0.5 * torch.randn(int(0.1 * SR), generator=g)
    (curve, seconds), units = curves(adapter, layer, torch.stack([quiet, burst]))
    frames = curve.shape[2]
    assert curve.shape == (2, units, frames) and frames > 3
    assert 0.85 <= frames * seconds <= 1.1  # the frames cover the clip
    change = (curve[1] - curve[0]).abs().mean(dim=0)  # over units
    peak = (int(change.argmax()) + 0.5) * seconds
    assert BURST[0] - 0.1 <= peak <= BURST[1] + 0.1, (which, peak, change)
    if head is not None:
        out = {}
        handle = adapter.layer_module(head).register_forward_hook(lambda m, i, o: out.setdefault("o", o))
        with torch.no_grad():
            adapter(burst[None])
        handle.remove()
        assert adapter.time_curve(head, out["o"], 1, 1.0) is None
