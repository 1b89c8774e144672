"""The default target model: a small log-mel CNN that trains in CPU minutes on 1 s clips at 16 kHz.

Four conv blocks (conv-BN-ReLU-pool) named conv1..conv4, mean and max pooling over time (frequency bands are
kept, so the head knows where in the spectrum energy lies: plain global pooling makes pitch nearly invisible;
the max keeps brief or modulated events visible) and a linear head `fc`.
Dissectable layers are the conv blocks' channels as the next layer reads them (BatchNorm, then ReLU, before
pooling; `pre_activation` recordings stop before the ReLU) and the logits.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn
from torchaudio.transforms import MelSpectrogram

from and_lightning.data.audio_io import resample
from and_lightning.models.base import TargetAdapter

LOG_OFFSET = 1e-6  # added to the mel power before the log so silence stays finite
NORMS = ("batchnorm", "clip")


class ConvBlock(nn.Sequential):
    """conv 3x3 -> BatchNorm -> ReLU -> 2x2 max-pool; a unit is a channel of relu(bn(conv(x)))."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()  # not in place: hooks on `bn` (the logical layer) keep its output
        self.pool = nn.MaxPool2d(2, ceil_mode=True)


class SmallCNNNet(nn.Module):
    """Log-mel [B, n_mels, frames] -> logits [B, C]; `norm` BatchNorm over mel bins or nothing."""

    def __init__(self, num_classes: int, n_mels: int, channels: Sequence[int], dropout: float, norm: str):
        super().__init__()
        # Running per-mel-bin statistics (PANNs' bn0): fixed at eval time, so loudness stays visible.
        self.norm = nn.BatchNorm1d(n_mels) if norm == "batchnorm" else nn.Identity()
        widths = [1, *channels]
        for i in range(len(channels)):
            self.add_module(f"conv{i + 1}", ConvBlock(widths[i], widths[i + 1]))
        self.num_blocks = len(channels)
        bands = n_mels
        for _ in channels:
            bands = math.ceil(bands / 2)  # each 2x2 max-pool (ceil mode) halves the mel axis
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * widths[-1] * bands, num_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.norm(feats).unsqueeze(1)  # [B, 1, n_mels, frames]
        for i in range(self.num_blocks):
            x = getattr(self, f"conv{i + 1}")(x)
        x = torch.cat([x.mean(dim=3), x.amax(dim=3)], dim=1).flatten(1)  # mean and max over time, per band
        return self.fc(self.dropout(x))


class SmallCNN(TargetAdapter):
    """Small log-mel CNN classifier; logical layers `conv1`..`convN` (block channels after BatchNorm and ReLU)
    and `head` (logits).

    `norm="batchnorm"` (default) normalises each mel bin with running statistics learned in training;
    `norm="clip"` standardises each clip's log-mel (loudness-invariant).
    """

    def __init__(
        self,
        num_classes: int,
        sample_rate: int = 16000,
        n_mels: int = 64,
        channels: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.2,
        norm: str = "batchnorm",
        n_fft: int = 512,
        hop_length: int = 160,
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"SmallCNN: norm must be one of {NORMS}, got '{norm}'")
        if num_classes < 1:
            raise ValueError(f"SmallCNN: num_classes must be >= 1, got {num_classes}")
        self.sample_rate = int(sample_rate)
        self.norm_mode = norm
        self.mel = MelSpectrogram(
            sample_rate=self.sample_rate, n_fft=n_fft, win_length=min(n_fft, int(0.025 * self.sample_rate)),
            hop_length=hop_length, n_mels=n_mels, power=2.0,
        )
        self.net = SmallCNNNet(num_classes, n_mels, list(channels), dropout, norm)
        self.head_path = "net.fc"

    def preprocess(self, wave: torch.Tensor, sr: int | None = None) -> torch.Tensor:
        """Waveforms [B, T] -> log-mel [B, n_mels, frames] (per-clip standardised when norm='clip')."""
        if sr is not None and sr != self.sample_rate:
            wave = resample(wave, sr, self.sample_rate)
        feats = torch.log(self.mel(wave) + LOG_OFFSET)
        if self.norm_mode == "clip":
            mean = feats.mean(dim=(-2, -1), keepdim=True)
            std = feats.std(dim=(-2, -1), keepdim=True).clamp_min(1e-5)
            feats = (feats - mean) / std
        return feats

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(wave))

    def layer_paths(self) -> dict[str, str]:
        paths = {f"conv{i + 1}": f"net.conv{i + 1}.bn" for i in range(self.net.num_blocks)}
        paths["head"] = self.head_path
        return paths

    def unit_activations(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        return {f"conv{i + 1}": torch.relu for i in range(self.net.num_blocks)}
