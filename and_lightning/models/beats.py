"""BEATs target: the official preprocessing, checkpoint formats and a linear head behind the adapter API.

Checkpoints: the official release format `{"cfg": dict, "model": state_dict}` (self-supervised or AudioSet
fine-tuned, whose `predictor` becomes the head when the class counts match), and the original AND code's
`MyBeatsModel` state dict (`beats.*` backbone + `fc.*` head; bare, or under "model" with a "cfg").
Audio at another rate is resampled to 16 kHz: the original AND code fed 48 kHz audio as 16 kHz (spec §1.4).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torchaudio.compliance.kaldi as kaldi
from torch import nn

from and_lightning.checkpoints import CheckpointError, load_weights_only
from and_lightning.data.audio_io import resample
from and_lightning.models.base import TargetAdapter, per_frame
from and_lightning.models.beats_encoder import BEATs, BEATsConfig

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NUM_MEL_BINS = 128
FBANK_MEAN = 15.41663  # BEATs.preprocess defaults (AudioSet statistics of the x 2^15 Kaldi log-fbank)
FBANK_STD = 6.55582
WAVE_SCALE = 2**15  # BEATs scales [-1, 1] waveforms to the 16-bit integer range before the fbank
WINDOW_SAMPLES = 400  # one 25 ms frame at 16 kHz
HOP_SAMPLES = 160  # 10 ms frame shift
POOLINGS = ("mean", "per_token")
# fields that change regularisation only; `config` may override them on top of a checkpoint's cfg
TRAINING_FIELDS = {"dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "dropout_input",
                   "layer_wise_gradient_decay_ratio", "predictor_dropout"}


def beats_fbank(wave: torch.Tensor) -> torch.Tensor:
    """16 kHz waveforms [B, T] in [-1, 1] -> normalised log-mel [B, frames, 128], as `BEATs.preprocess`.

    Per clip: x 2^15, `torchaudio.compliance.kaldi.fbank` (128 bins, 25 ms povey window, 10 ms shift, no dither),
    then (fbank - 15.41663) / (2 * 6.55582). frames = 1 + (T - 400) // 160.
    """
    if wave.dim() != 2 or wave.shape[-1] < WINDOW_SAMPLES:
        raise ValueError(f"beats_fbank: expected waveforms [B, T] with T >= {WINDOW_SAMPLES} samples (one 25 ms "
                         f"frame at 16 kHz), got shape {tuple(wave.shape)}")
    work = torch.promote_types(wave.dtype, torch.float32)  # float64 stays float64; half is computed in float32
    fbanks = [
        kaldi.fbank(clip.to(work).unsqueeze(0) * WAVE_SCALE, num_mel_bins=NUM_MEL_BINS,
                    sample_frequency=SAMPLE_RATE, frame_length=25, frame_shift=10)
        for clip in wave
    ]
    return ((torch.stack(fbanks) - FBANK_MEAN) / (2 * FBANK_STD)).to(wave.dtype)


def fbank_frames(lengths: torch.Tensor) -> torch.Tensor:
    """Whole 25 ms / 10 ms fbank frames in clips of `lengths` samples at 16 kHz: 1 + (T - 400) // 160, or 0."""
    return torch.where(lengths >= WINDOW_SAMPLES, 1 + (lengths - WINDOW_SAMPLES) // HOP_SAMPLES, 0)


def mean_over_tokens(x: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
    """[B, tokens, D] -> [B, D]: the mean over each clip's tokens, padding (bool [B, tokens]) left out."""
    if padding is None:
        return x.mean(dim=1)
    return x.masked_fill(padding.unsqueeze(-1), 0.0).sum(dim=1) / (~padding).sum(dim=1, keepdim=True)


@dataclass
class BEATsCheckpoint:
    """A checkpoint split into the official cfg, the backbone state dict (official keys) and an optional head."""

    cfg: dict[str, Any]
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]  # {"weight", "bias"} from `fc.*` or `predictor.*`; empty when absent


def read_beats_checkpoint(path: str | os.PathLike) -> BEATsCheckpoint:
    """Load an official BEATs checkpoint or a MyBeatsModel state dict with `weights_only=True`."""
    payload = load_weights_only(path, "model.checkpoint")
    expected = ("expected the official BEATs format {'cfg': dict, 'model': state_dict} or a MyBeatsModel state "
                "dict (keys beats.*, fc.*)")
    if isinstance(payload, dict) and "model" in payload:
        cfg, state = payload.get("cfg") or {}, payload["model"]
    else:
        cfg, state = {}, payload
    if not isinstance(cfg, dict) or not isinstance(state, dict) or not state or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        top = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"model.checkpoint: {path}: {expected}; got {top}")
    if any(k.startswith("beats.") for k in state):  # MyBeatsModel
        stray = [k for k in state if not k.startswith(("beats.", "fc."))]
        if stray:
            raise CheckpointError(f"model.checkpoint: {path}: unexpected keys {stray[:5]} in a MyBeatsModel "
                                  f"state dict; {expected}")
        backbone = {k[len("beats."):]: v for k, v in state.items() if k.startswith("beats.")}
        head = {k[len("fc."):]: v for k, v in state.items() if k.startswith("fc.")}
    else:
        backbone = {k: v for k, v in state.items() if not k.startswith("predictor.")}
        head = {k[len("predictor."):]: v for k, v in state.items() if k.startswith("predictor.")}
    return BEATsCheckpoint(dict(cfg), backbone, head)


def merge_config(base: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """`overrides` (model.config) over a checkpoint's cfg; architecture fields must agree with the checkpoint."""
    known = {f.name for f in dataclasses.fields(BEATsConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"model.config: unknown BEATs fields {unknown}; expected some of {sorted(known)}")
    clash = {k: (v, base[k]) for k, v in overrides.items() if k in base and k not in TRAINING_FIELDS and base[k] != v}
    if clash:
        detail = ", ".join(f"{k}={mine} but the checkpoint has {theirs}" for k, (mine, theirs) in clash.items())
        raise ValueError(f"model.config disagrees with the cfg of {source}: {detail} (only {sorted(TRAINING_FIELDS)} "
                         "may be overridden)")
    return {**base, **overrides}


class BEATsAdapter(TargetAdapter):
    """BEATs classifier; logical layers `block{i}.fc1` (GELU(fc1 output), what fc2 reads; `pre_activation`
    recordings: the fc1 output, as the original), `block{i}.fc2` (pre-residual) and `head` (`fc`).

    `checkpoint`: an official BEATs checkpoint or a MyBeatsModel state dict (see the module docstring); `config`:
    BEATsConfig fields, the whole architecture for a random model, or regularisation overrides (dropout,
    layerdrop, ...) on top of a checkpoint's cfg. A bare MyBeatsModel state dict carries no cfg: `config` (or the
    BEATsConfig defaults, the base model of the original AND code) describes it.
    `pooling`: "mean" applies `fc` to the mean of the tokens; "per_token" applies `fc` to every token and
    averages the logits, as the original MyBeatsModel did. The logits are identical (the head is linear), but
    with "per_token" the head's hook sees per-token logits [B, tokens, C], so the probe's `token0` reduction
    reproduces the original code's fc activations (token 0 only) for faithful runs.
    Padding: `forward(wave, lengths)` leaves the tokens past each clip's `lengths` samples out of attention and
    pooling (the official `padding_mask`), so a clip zero-padded in a batch gets the values it gets alone;
    `valid_positions` tells the probe which tokens of the hooked layers to reduce over.
    """

    uses_lengths = True

    head_path = "fc"

    def __init__(
        self,
        num_classes: int,
        checkpoint: str | None = None,
        config: dict[str, Any] | None = None,
        pooling: str = "mean",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"BEATsAdapter: pooling must be one of {POOLINGS}, got '{pooling}'")
        self.sample_rate = SAMPLE_RATE
        self.pooling = pooling
        self.padding: torch.Tensor | None = None  # bool [B, tokens] of the latest forward pass; None: no padding
        loaded = read_beats_checkpoint(checkpoint) if checkpoint else None
        values = merge_config(loaded.cfg if loaded else {}, dict(config or {}), str(checkpoint))
        self.config = BEATsConfig.from_dict(values)
        # the adapter's own `fc` is the head; a fine-tuned checkpoint's `predictor` is moved into it below
        self.beats = BEATs(dataclasses.replace(self.config, finetuned_model=False))
        self.fc = nn.Linear(self.config.encoder_embed_dim, num_classes)
        if loaded:
            self._load(loaded, str(checkpoint))

    def _load(self, loaded: BEATsCheckpoint, source: str) -> None:
        try:
            self.beats.load_state_dict(loaded.backbone, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"model.checkpoint: {source} does not match its BEATs config "
                                  f"({self.config}): {e}") from e
        weight = loaded.head.get("weight")
        if weight is not None and weight.shape == self.fc.weight.shape and "bias" in loaded.head:
            self.fc.load_state_dict(loaded.head, strict=True)
            log.info("BEATs: head loaded from %s", source)
        else:
            got = tuple(weight.shape) if weight is not None else "none"
            log.info("BEATs: head of %s (%s) does not fit %s; fc re-initialised", source, got,
                     tuple(self.fc.weight.shape))

    def preprocess(self, wave: torch.Tensor, sr: int | None = None) -> torch.Tensor:
        """Waveforms [B, T] at `sr` (default 16 kHz; other rates are resampled) -> fbank [B, frames, 128]."""
        if sr is not None and sr != self.sample_rate:
            wave = resample(wave, sr, self.sample_rate)
        return beats_fbank(wave)

    def tokens(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """16 kHz waveforms [B, T] -> token features [B, (frames // 16) * 8, D] (time-major). With `lengths`
        (samples of each clip before zero padding) the tokens past a clip's end are padding: `self.padding`."""
        fbank = self.preprocess(wave)
        padding = None if lengths is None else self.beats.token_padding(fbank, fbank_frames(lengths))
        self.padding = padding if padding is not None and bool(padding.any()) else None
        return self.beats.extract_features(fbank, self.padding)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tokens(wave, lengths)
        if self.pooling == "mean":
            return self.fc(mean_over_tokens(x, self.padding))
        return mean_over_tokens(self.fc(x), self.padding)

    def valid_positions(self, positions: int) -> torch.Tensor | None:
        """bool [B, tokens], True for the clip's own tokens, when the latest forward pass had padding and a layer's
        positions are the tokens (fc1, fc2, a per_token head); None otherwise."""
        if self.padding is None or self.padding.shape[1] != positions:
            return None
        return ~self.padding

    def time_curve(self, name: str, output: torch.Tensor, batch_size: int, clip_seconds: float,
                   pre_activation: bool = False) -> tuple[torch.Tensor, float] | None:
        """Block layers: the tokens on their (time, freq) grid of square fbank patches, averaged over frequency; a
        time step is one patch of 10 ms frames. The head: None."""
        if name == "head":
            return None
        patch = self.config.input_patch_size
        view = self.unit_view(name, output, batch_size, pre_activation)
        return (per_frame(view, view.shape[2] // (NUM_MEL_BINS // patch), time_major=True),
                patch * HOP_SAMPLES / SAMPLE_RATE)

    def layer_paths(self) -> dict[str, str]:
        paths = {
            f"block{i}.{kind}": f"beats.encoder.layers.{i}.{kind}"
            for i in range(self.config.encoder_layers)
            for kind in ("fc1", "fc2")
        }
        paths["head"] = self.head_path
        return paths

    def unit_activations(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        return {f"block{i}.fc1": layer.activation for i, layer in enumerate(self.beats.encoder.layers)}
