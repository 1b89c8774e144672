"""A tiny model whose units are wired to known acoustic features, for checking that dissection names them.

`PlantedNet` maps waveforms [B, T] to logits through one hidden layer, `planted`: a Linear with identity weights
over six hand-computed features of the clip (no learning), so unit i responds to feature `FEATURES[i]` and to
nothing else. A dissection of that layer should describe each unit by its feature (`EXPECTED`).
"""
from __future__ import annotations

import torch
from torch import nn

FEATURES = ("loudness", "high_band", "low_band", "pulse_rate", "flatness", "pitch_rise")
# The words a right description of each unit uses (any one of them), and the opposite words it must not use.
EXPECTED = {
    "loudness": ({"loud"}, {"quiet"}),
    "high_band": ({"high-pitched", "bright"}, {"low-pitched", "dark"}),
    "low_band": ({"low-pitched", "rumble", "dark"}, {"high-pitched", "bright"}),
    "pulse_rate": ({"pulsing", "pulsed"}, {"steady"}),
    "flatness": ({"noisy", "noise", "hiss"}, {"tonal"}),
    "pitch_rise": ({"rising"}, {"falling"}),
}


class PlantedNet(nn.Module):
    """Six planted units (`FEATURES`, in that order) -> ReLU -> a linear head of `num_classes` logits."""

    def __init__(self, num_classes: int, sample_rate: int = 16000):
        super().__init__()
        self.sample_rate = sample_rate
        self.planted = nn.Linear(len(FEATURES), len(FEATURES))
        self.fc = nn.Linear(len(FEATURES), num_classes)
        with torch.no_grad():
            self.planted.weight.copy_(torch.eye(len(FEATURES)))
            self.planted.bias.zero_()

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, T] -> [B, 6]: level (dB), high- and low-band shares (dB), onsets per second, spectral flatness and
        the slope of the dominant frequency (octaves per second) over the sounding frames."""
        sr, hop, n_fft = self.sample_rate, self.sample_rate // 100, 1024
        window = torch.hann_window(n_fft, device=wave.device)
        power = torch.stft(wave, n_fft, hop, window=window, return_complex=True).abs().pow(2).transpose(1, 2)
        freqs = torch.fft.rfftfreq(n_fft, 1.0 / sr, device=wave.device)  # power: [B, frames, bins]
        frame_power = power.sum(-1)
        frame_db = 10 * torch.log10(frame_power + 1e-10)
        on = frame_db > frame_db.amax(-1, keepdim=True) - 20.0  # sounding frames
        total = (power * on[..., None]).sum(1)  # [B, bins]
        share_db = lambda band: 10 * torch.log10(total[:, band].sum(-1) / total.sum(-1) + 1e-10)  # noqa: E731
        loudness = 10 * torch.log10(wave.pow(2).mean(-1) + 1e-10)
        # onsets of the 100 ms-smoothed level (a gate's rhythm, not tremolo or clicks), per second
        level = nn.functional.avg_pool1d(frame_power[:, None], 11, 1, 5, count_include_pad=False)[:, 0]
        level_db = 10 * torch.log10(level + 1e-10)
        up = level_db > level_db.amax(-1, keepdim=True) - 10.0
        pulse = (up[:, 1:] & ~up[:, :-1]).sum(-1) * sr / hop / wave.shape[-1]
        p = power[..., 1:] + 1e-10
        flat = (p.log().mean(-1).exp() / p.mean(-1) * on).sum(-1) / on.sum(-1)
        # the dominant frequency's slope (octaves per second), each frame weighted by how tonal it is (the share
        # of its power in the peak bin): a noise's wandering peak does not count
        peak, at = power.max(-1)
        w = on * (peak / (frame_power + 1e-10)) ** 2
        t = torch.arange(power.shape[1], device=wave.device) * hop / sr
        y = torch.log2(freqs[at] + 1.0)
        mean = lambda v: (w * v).sum(-1, keepdim=True) / (w.sum(-1, keepdim=True) + 1e-10)  # noqa: E731
        rise = (mean((t - mean(t)) * (y - mean(y))) / (mean((t - mean(t)) ** 2) + 1e-10))[:, 0]
        return torch.stack([loudness, share_db(freqs >= 2000), share_db(freqs < 250), pulse, flat, rise], -1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.planted(self.features(wave))))
