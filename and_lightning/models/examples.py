"""A model of your own, as `model=custom` takes it (README "Your own model"): a plain `nn.Module` that maps
waveforms [B, T] at 16 kHz to logits [B, C], with nothing from this framework in it.

    python train.py model=custom model.net._target_=and_lightning.models.examples.TinyAudioNet \
        'model.layers={block1: features.2, block2: features.6, head: fc}'

`features.2` and `features.6` are the ReLUs after each BatchNorm: their outputs are what the next layer reads.
"""
from __future__ import annotations

import torch
from torch import nn
from torchaudio.transforms import MelSpectrogram


class TinyAudioNet(nn.Module):
    """Log-mel -> two conv blocks (conv, BatchNorm, ReLU, max-pool) -> mean over time and frequency -> linear."""

    def __init__(self, num_classes: int, sample_rate: int = 16000, n_mels: int = 40, width: int = 16):
        super().__init__()
        self.mel = MelSpectrogram(sample_rate, n_fft=512, win_length=400, hop_length=160, n_mels=n_mels)
        self.norm = nn.BatchNorm2d(1)  # log-mel levels, normalised with statistics learned in training
        self.features = nn.Sequential(
            nn.Conv2d(1, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.norm(torch.log(self.mel(wave) + 1e-6).unsqueeze(1))  # [B, 1, n_mels, frames]
        return self.fc(self.features(x).mean(dim=(2, 3)))
