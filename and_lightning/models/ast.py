"""Audio Spectrogram Transformer target: transformers' `ASTForAudioClassification` behind the adapter API.

Preprocessing is a batched re-implementation of `ASTFeatureExtractor` (Kaldi fbank, pad/truncate, AudioSet
normalisation) so a whole batch is featurised on the model's device in one go.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torchaudio.compliance.kaldi as kaldi
from torch import nn
from transformers import ASTConfig, ASTForAudioClassification

from and_lightning.data.audio_io import resample
from and_lightning.models.base import TargetAdapter, per_frame

AUDIOSET_MEAN = -4.2677393  # ASTFeatureExtractor defaults (AudioSet log-fbank statistics)
AUDIOSET_STD = 4.5689974
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
LOG_FLOOR = torch.finfo(torch.float32).eps  # kaldi's epsilon on mel energies before the log

# transformers 5.x module paths (relative to the ASTForAudioClassification)
BLOCK_PATHS = {
    "attn_out": "audio_spectrogram_transformer.layers.{i}.attention.o_proj",
    "fc1": "audio_spectrogram_transformer.layers.{i}.mlp.fc1",
    "fc2": "audio_spectrogram_transformer.layers.{i}.mlp.fc2",
}
HEAD_PATH = "classifier.dense"


class KaldiFbank(nn.Module):
    """Batched `torchaudio.compliance.kaldi.fbank` with ASTFeatureExtractor's settings.

    Hanning window of 25 ms, 10 ms hop, DC removal, pre-emphasis 0.97, power spectrum on a power-of-two FFT,
    Kaldi mel banks from 20 Hz to Nyquist, log with a float32-epsilon floor, no dither, no energy column,
    snip_edges (only whole frames). Waveforms are used unscaled, as ASTFeatureExtractor does.
    """

    def __init__(self, sample_rate: int, num_mel_bins: int):
        super().__init__()
        self.window_size = int(sample_rate * FRAME_LENGTH_MS / 1000)
        self.window_shift = int(sample_rate * FRAME_SHIFT_MS / 1000)
        self.n_fft = 1 << (self.window_size - 1).bit_length()
        banks, _ = kaldi.get_mel_banks(
            num_mel_bins, self.n_fft, float(sample_rate), low_freq=LOW_FREQ, high_freq=0.0,
            vtln_low=100.0, vtln_high=-500.0, vtln_warp_factor=1.0,
        )
        self.register_buffer("banks", nn.functional.pad(banks.float(), (0, 1)), persistent=False)
        self.register_buffer("window", torch.hann_window(self.window_size, periodic=False), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, T] -> log mel energies [B, frames, num_mel_bins] (frames = 1 + (T - 400) // 160 at 16 kHz)."""
        if wave.shape[-1] < self.window_size:  # no whole frame: kaldi returns nothing
            return wave.new_zeros(wave.shape[0], 0, self.banks.shape[0])
        frames = wave.unfold(-1, self.window_size, self.window_shift)  # [B, m, window]
        frames = frames - frames.mean(dim=-1, keepdim=True)
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - PREEMPHASIS * previous) * self.window
        spectrum = torch.fft.rfft(frames, n=self.n_fft).abs().pow(2.0)  # [B, m, n_fft/2 + 1]
        mel = spectrum @ self.banks.T
        return mel.clamp_min(LOG_FLOOR).log()


class ASTAdapter(TargetAdapter):
    """AST classifier; logical layers `block{i}.attn_out|fc1|fc2` and `head`.

    `attn_out` and `fc2` are the Linear outputs added to the residual stream; `fc1` units are the MLP's hidden
    neurons as fc2 reads them, GELU(fc1 output) (`pre_activation` recordings: the fc1 output, as the original).

    `pretrained`: a hub id or local directory for `from_pretrained` (the head is re-initialised when
    `num_classes` differs from the checkpoint's); otherwise a random model from `ASTConfig(**config)`.
    """

    uses_lengths = True

    def __init__(
        self,
        num_classes: int,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        max_length: int = 1024,
        num_mel_bins: int = 128,
        mean: float = AUDIOSET_MEAN,
        std: float = AUDIOSET_STD,
    ):
        super().__init__()
        self.sample_rate = 16000
        if pretrained:
            if config:
                raise ValueError("ASTAdapter: give either `pretrained` or `config`, not both")
            self.net = ASTForAudioClassification.from_pretrained(
                pretrained, num_labels=num_classes, ignore_mismatched_sizes=True
            )
            for field, wanted in (("max_length", max_length), ("num_mel_bins", num_mel_bins)):
                got = getattr(self.net.config, field)
                if got != wanted:
                    raise ValueError(
                        f"ASTAdapter: checkpoint '{pretrained}' has {field}={got} but {field}={wanted} was "
                        f"requested; set {field}: {got} (position embeddings are fixed by the checkpoint)"
                    )
        else:
            cfg = {"max_length": max_length, "num_mel_bins": num_mel_bins, **(config or {}), "num_labels": num_classes}
            self.net = ASTForAudioClassification(ASTConfig(**cfg))
        self.max_length = int(self.net.config.max_length)
        self.num_mel_bins = int(self.net.config.num_mel_bins)
        self.mean, self.std = float(mean), float(std)
        self.fbank = KaldiFbank(self.sample_rate, self.num_mel_bins)
        self.head_path = f"net.{HEAD_PATH}"

    def preprocess(self, wave: torch.Tensor, sr: int | None = None,
                   lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Waveforms [B, T] -> normalised fbank [B, max_length, num_mel_bins] (zero-padded before normalising).

        AST reads a fixed `max_length` frames and attends to all of them, padding included, as in training, so a
        clip's values never depend on the other clips of a batch. `lengths` (samples of each clip at the model's
        rate before zero padding) zero the frames past a clip's end, as ASTFeatureExtractor pads the clip alone:
        a clip padded in a batch then gets the features it gets alone (a padded waveform's frames are log-floor).
        """
        if sr is not None and sr != self.sample_rate:
            wave = resample(wave, sr, self.sample_rate)
        fbank = self.fbank(wave)
        if lengths is not None:
            frames = ((lengths.to(fbank.device) - self.fbank.window_size) // self.fbank.window_shift + 1).clamp_min(0)
            past_end = torch.arange(fbank.shape[1], device=fbank.device)[None, :] >= frames[:, None]
            fbank = fbank.masked_fill(past_end[..., None], 0.0)
        n = fbank.shape[1]
        if n < self.max_length:
            fbank = nn.functional.pad(fbank, (0, 0, 0, self.max_length - n))
        else:
            fbank = fbank[:, : self.max_length]
        return (fbank - self.mean) / (self.std * 2)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(input_values=self.preprocess(wave, lengths=lengths)).logits

    def layer_paths(self) -> dict[str, str]:
        paths = {
            f"block{i}.{kind}": "net." + template.format(i=i)
            for i in range(self.net.config.num_hidden_layers)
            for kind, template in BLOCK_PATHS.items()
        }
        paths["head"] = self.head_path
        return paths

    def time_curve(self, name: str, output: torch.Tensor, batch_size: int, clip_seconds: float,
                   pre_activation: bool = False) -> tuple[torch.Tensor, float] | None:
        """Block layers: the patch tokens (the CLS and distillation tokens dropped) on their (freq, time) grid,
        averaged over frequency; a time step is `time_stride` fbank frames of 10 ms. The head: None."""
        if name == "head":
            return None
        c = self.net.config
        freq = (c.num_mel_bins - c.patch_size) // c.frequency_stride + 1
        frames = (c.max_length - c.patch_size) // c.time_stride + 1
        view = self.unit_view(name, output, batch_size, pre_activation)
        patches = view[:, :, view.shape[2] - freq * frames:]
        return per_frame(patches, frames), c.time_stride * self.fbank.window_shift / self.sample_rate

    def unit_activations(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        mlp = BLOCK_PATHS["fc1"].rsplit(".", 1)[0]  # the MLP holding fc1 and its activation
        return {f"block{i}.fc1": self.net.get_submodule(mlp.format(i=i)).activation_fn
                for i in range(self.net.config.num_hidden_layers)}
