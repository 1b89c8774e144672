"""Waveform augmentations that make two views of one clip for contrastive pre-training.

They are chosen to keep the attributes a dissection asks about (pitch, source, rhythm) and to blur only what
a listener would call the same sound: where it starts (circular shift), a few dB of level, a little added noise
and a short dropout. No pitch shift or filtering: those would teach the backbone to ignore pitch and brightness.
"""
from __future__ import annotations

import torch
from torch import nn


class WaveAugment(nn.Module):
    """Random circular shift, gain in [-gain_db, gain_db], white noise at SNR in `snr_db`, one zeroed span of
    at most `mask_fraction` of the clip; each drawn per clip from `generator` (or the global RNG)."""

    def __init__(self, gain_db: float = 6.0, snr_db: tuple[float, float] = (20.0, 40.0),
                 mask_fraction: float = 0.15, shift: bool = True):
        super().__init__()
        low, high = map(float, snr_db)
        if low > high or gain_db < 0 or not 0.0 <= mask_fraction < 1.0:
            raise ValueError(f"WaveAugment: need gain_db >= 0, snr_db [low, high] with low <= high, "
                             f"0 <= mask_fraction < 1; got {gain_db}, {snr_db}, {mask_fraction}")
        self.gain_db, self.snr_db, self.mask_fraction, self.shift = float(gain_db), (low, high), mask_fraction, shift

    def forward(self, wave: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, T] -> an augmented copy [B, T]."""
        b, t = wave.shape
        dev = wave.device

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return low + (high - low) * torch.rand(*shape, generator=generator, device=dev)

        pos = torch.arange(t, device=dev).expand(b, t)
        if self.shift:
            offset = (uniform(0, 1, b, 1) * t).long()
            wave = wave.gather(1, (pos + offset) % t)
        wave = wave * 10 ** (uniform(-self.gain_db, self.gain_db, b, 1) / 20)
        rms = wave.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-6)
        noise_rms = rms * 10 ** (-uniform(*self.snr_db, b, 1) / 20)
        wave = wave + noise_rms * torch.randn(b, t, generator=generator, device=dev)
        if self.mask_fraction > 0:
            length = (uniform(0, self.mask_fraction, b, 1) * t).long()
            start = (uniform(0, 1, b, 1) * (t - length)).long()
            wave = wave.masked_fill((pos >= start) & (pos < start + length), 0.0)
        return wave
