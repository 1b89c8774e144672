"""The BEATs encoder (Chen et al. 2022, microsoft/unilm `BEATs/BEATs.py` + `backbone.py`), re-implemented.

Module names follow the official code, so official checkpoints (`{"cfg": dict, "model": state_dict}`) load with
`load_state_dict(strict=True)`: `patch_embedding`, `layer_norm`, `post_extract_proj`, `encoder.pos_conv.0`
(`weight_g`/`weight_v`, the old `torch.nn.utils.weight_norm` names), `encoder.layers.N.{self_attn,
self_attn_layer_norm, fc1, fc2, final_layer_norm}`, `encoder.layer_norm`, and `predictor` for fine-tuned models.
Tensors are batch-first [B, tokens, dim] throughout (the official code switches to fairseq's [T, B, D] inside the
encoder; the arithmetic is the same), so hooks on `fc1`/`fc2` see [B, tokens, units].

Padding (`padding`: bool [B, tokens], True for tokens of a clip's zero padding), as the official `padding_mask`:
padded tokens are zeroed before the convolutional position embedding and never attended to, so the other tokens
of a clip padded in a batch equal those of the clip alone (`token_padding` says which tokens those are).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}
INIT_STD = 0.02  # fairseq's init_bert_params


@dataclass(frozen=True)
class BEATsConfig:
    """Field names and meanings of the official `BEATsConfig`; defaults are the base model AND used (cfg.pkl)."""

    input_patch_size: int = 16  # square patch (frames x mel bins) of the patch embedding
    embed_dim: int = 512  # patch-embedding width (projected to encoder_embed_dim when different)
    conv_bias: bool = False  # bias in the patch-embedding conv
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 1.0  # gradient scale applied before every layer (1 = off)
    layer_norm_first: bool = False  # pre-LN; the released models are post-LN with deep_norm
    deep_norm: bool = True  # residuals scaled by (2 * encoder_layers) ** 0.25 before the post-LN
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.05
    dropout_input: float = 0.0
    conv_pos: int = 128  # kernel of the convolutional positional embedding
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True  # gated relative position bias
    finetuned_model: bool = False  # True: a `predictor` Linear (fine-tuned AudioSet checkpoints)
    predictor_dropout: float = 0.1
    predictor_class: int = 527

    def __post_init__(self) -> None:
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(f"BEATsConfig: encoder_embed_dim={self.encoder_embed_dim} is not divisible by "
                             f"encoder_attention_heads={self.encoder_attention_heads}")
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ValueError(f"BEATsConfig: encoder_embed_dim={self.encoder_embed_dim} is not divisible by "
                             f"conv_pos_groups={self.conv_pos_groups}")
        if self.deep_norm and self.layer_norm_first:
            raise ValueError("BEATsConfig: deep_norm and layer_norm_first cannot both be true")
        if self.activation_fn not in ACTIVATIONS:
            raise ValueError(f"BEATsConfig: activation_fn '{self.activation_fn}' is not supported; "
                             f"expected one of {sorted(ACTIVATIONS)}")
        if self.input_patch_size <= 0:
            raise ValueError(f"BEATsConfig: input_patch_size must be positive, got {self.input_patch_size}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BEATsConfig:
        """Known fields from `values`; unknown keys are logged and ignored (the official class accepts anything)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            log.warning("BEATsConfig: ignoring unknown fields %s", unknown)
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def relative_position_bucket(relative_positions: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional T5-style bucket of (key - query) offsets, as in BEATs `_relative_positions_bucket`.

    Half the buckets per direction (positive offsets are shifted by num_buckets // 2); within a direction offsets
    below max_exact = num_buckets // 4 get their own bucket, larger ones a log-spaced bucket up to max_distance,
    capped at the direction's last bucket.
    """
    half = num_buckets // 2
    buckets = (relative_positions > 0).long() * half
    distance = relative_positions.abs()
    max_exact = half // 2
    log_ratio = torch.log(distance.clamp_min(1).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (half - max_exact)).long()).clamp_max(half - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class GradMultiply(torch.autograd.Function):
    """Identity forward, gradient scaled by `scale` backward (BEATs' layer-wise gradient decay)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class WeightNormConv1d(nn.Module):
    """Conv1d with weight = weight_v * weight_g / ||weight_v|| (norm over all but the kernel axis, dim=2).

    Stores `weight_g` [1, 1, K] and `weight_v` [C_out, C_in / groups, K] under the names of the old
    `torch.nn.utils.weight_norm(conv, dim=2)` used by the official checkpoints; state dicts written with the
    newer parametrization names (`parametrizations.weight.original0/1`) are renamed on load.
    """

    PARAMETRIZED = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        std = math.sqrt(4.0 / (kernel_size * channels))  # official init (dropout 0) before weight_norm
        v = torch.randn(channels, channels // groups, kernel_size) * std
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(channels))

    def normalized_weight(self) -> torch.Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.normalized_weight(), self.bias, padding=self.padding, groups=self.groups)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 (torch signature)
        for new, old in self.PARAMETRIZED.items():
            if prefix + new in state_dict:
                state_dict[prefix + old] = state_dict.pop(prefix + new)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SamePad(nn.Module):
    """Drop the extra last frame an even kernel with padding K // 2 produces (keeps the sequence length)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.remove] if self.remove else x


class MultiheadAttention(nn.Module):
    """Self-attention with a (gated) relative position bias; returns (output, the ungated bias for reuse).

    The official code computes softmax((q * s / 32) k^T - rowmax) * 32 + bias) for numerical range; the shift
    cancels in the softmax, so this is softmax(q k^T * s + bias) with s = head_dim ** -0.5.
    Gate (gru_rel_pos): from the unscaled query q_h of each head, (a, b) = sigmoid(sum of 4-groups of
    grep_linear(q_h)); the bias is multiplied by a * (b * grep_a - 1) + 2.
    """

    def __init__(self, cfg: BEATsConfig, has_relative_attention_bias: bool):
        super().__init__()
        dim, heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.num_heads, self.head_dim = heads, dim // heads
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        self.dropout = cfg.attention_dropout
        self.has_relative_attention_bias = has_relative_attention_bias
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, heads)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gru_rel_pos = cfg.gru_rel_pos
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def compute_bias(self, length: int) -> torch.Tensor:
        """[heads, length, length] bias for query i, key j from the bucket of j - i."""
        positions = torch.arange(length, device=self.relative_attention_bias.weight.device)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None], self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None,
                padding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, dim = x.shape
        q, k, v = (proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))  # [B, H, T, hd]
        if self.has_relative_attention_bias and position_bias is None:
            position_bias = self.compute_bias(t)
        attn_bias = None
        if position_bias is not None:
            attn_bias = position_bias.unsqueeze(0)  # [1, H, T, T]
            if self.gru_rel_pos:
                gates = torch.sigmoid(self.grep_linear(q).view(b, self.num_heads, t, 2, 4).sum(-1))
                gate_a, gate_b = gates.chunk(2, dim=-1)  # [B, H, T, 1] each
                attn_bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * attn_bias
            attn_bias = attn_bias.to(q.dtype)
        if padding is not None:  # padded keys get -inf: softmax over the clip's own tokens only
            key_mask = torch.zeros(b, 1, 1, t, dtype=q.dtype, device=q.device).masked_fill(
                padding[:, None, None, :], float("-inf"))
            attn_bias = key_mask if attn_bias is None else attn_bias + key_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, dim)), position_bias


class TransformerSentenceEncoderLayer(nn.Module):
    """Attention + FFN block; post-LN with deep_norm residual scaling (or pre-LN when layer_norm_first).

    `fc1` (embed -> ffn, hooked pre-activation) and `fc2` (ffn -> embed, hooked before the residual add).
    """

    def __init__(self, cfg: BEATsConfig, has_relative_attention_bias: bool):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.activation = ACTIVATIONS[cfg.activation_fn]
        self.self_attn = MultiheadAttention(cfg, has_relative_attention_bias)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.activation_dropout)
        self.dropout3 = nn.Dropout(cfg.dropout)
        self.layer_norm_first = cfg.layer_norm_first
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.deep_norm_alpha = math.pow(2 * cfg.encoder_layers, 1 / 4) if cfg.deep_norm else 1.0

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout3(self.fc2(self.dropout2(self.activation(self.fc1(x)))))

    def forward(self, x: torch.Tensor, pos_bias: torch.Tensor | None,
                padding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.layer_norm_first:
            attn, pos_bias = self.self_attn(self.self_attn_layer_norm(x), pos_bias, padding)
            x = x + self.dropout1(attn)
            return x + self._ffn(self.final_layer_norm(x)), pos_bias
        attn, pos_bias = self.self_attn(x, pos_bias, padding)
        x = self.self_attn_layer_norm(x * self.deep_norm_alpha + self.dropout1(attn))
        x = self.final_layer_norm(x * self.deep_norm_alpha + self._ffn(x))
        return x, pos_bias


class TransformerEncoder(nn.Module):
    """Conv positional embedding, then the layers; the relative-bias table of layer 0 is shared by all layers
    (as in the official code, so every layer's `self_attn.relative_attention_bias.weight` is one tensor)."""

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.dropout = cfg.dropout
        self.pos_conv = nn.Sequential(WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups),
                                      SamePad(cfg.conv_pos), nn.GELU())
        rel = cfg.relative_position_embedding
        self.layers = nn.ModuleList(TransformerSentenceEncoderLayer(cfg, rel) for _ in range(cfg.encoder_layers))
        if rel:
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = self.layers[0].self_attn.relative_attention_bias
        self.layer_norm_first = cfg.layer_norm_first
        self.layer_norm = nn.LayerNorm(dim)
        self.layerdrop = cfg.encoder_layerdrop
        self.gradient_decay = cfg.layer_wise_gradient_decay_ratio
        self._init_weights(cfg)

    def _init_weights(self, cfg: BEATsConfig) -> None:
        """fairseq init_bert_params (N(0, 0.02) Linear/Embedding, zero bias), then deep_norm's xavier gains."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if cfg.deep_norm:
            beta = math.pow(8 * cfg.encoder_layers, -1 / 4)
            for layer in self.layers:
                attn = layer.self_attn
                for linear, gain in ((attn.k_proj, 1.0), (attn.v_proj, beta), (attn.q_proj, 1.0),
                                     (attn.out_proj, beta), (layer.fc1, beta), (layer.fc2, beta)):
                    nn.init.xavier_normal_(linear.weight, gain=gain)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, D] -> [B, T, D]; `padding` (bool [B, T]) marks tokens of zero padding."""
        if padding is not None:  # the position conv then sees zeros past each clip's end, as for the clip alone
            x = x.masked_fill(padding.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, p=self.dropout, training=self.training)
        pos_bias = None
        for layer in self.layers:
            if self.gradient_decay != 1.0:
                x = GradMultiply.apply(x, self.gradient_decay)
            if not self.training or torch.rand(()).item() > self.layerdrop:
                x, pos_bias = layer(x, pos_bias, padding)
        return self.layer_norm(x) if self.layer_norm_first else x


class BEATs(nn.Module):
    """Normalised fbank [B, frames, 128] -> token features [B, (frames // P) * (128 // P), D] (time-major).

    With `finetuned_model`, `predictor` maps each token to class logits (the official model averages them and
    applies a sigmoid); this module only holds it so fine-tuned checkpoints load strictly.
    """

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        self.cfg = cfg
        self.post_extract_proj = (nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
                                  if cfg.embed_dim != cfg.encoder_embed_dim else None)
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.input_patch_size,
                                         stride=cfg.input_patch_size, bias=cfg.conv_bias)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = TransformerEncoder(cfg)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        if cfg.finetuned_model:
            self.predictor_dropout = nn.Dropout(cfg.predictor_dropout)
            self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)
        else:
            self.predictor = None

    def token_padding(self, fbank: torch.Tensor, valid_frames: torch.Tensor) -> torch.Tensor:
        """bool [B, tokens], True for the tokens of fbank [B, frames, mel] that lie past a clip's `valid_frames`.

        A clip alone has `valid_frames // P` time patches (the remainder is dropped); the tokens of its later time
        patches (each P frames x mel // P tokens, time-major) are padding. A clip shorter than one patch keeps
        its first, partly padded patch.
        """
        patch = self.cfg.input_patch_size
        per_patch = fbank.shape[2] // patch
        patches = (valid_frames.to(fbank.device) // patch).clamp_min(1)
        time_of_token = torch.arange((fbank.shape[1] // patch) * per_patch, device=fbank.device) // per_patch
        return time_of_token[None, :] >= patches[:, None]

    def extract_features(self, fbank: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """[B, frames, mel] -> [B, tokens, D]; a remainder of frames shorter than one patch is dropped.
        `padding` (bool [B, tokens], from `token_padding`) marks tokens of zero padding."""
        patch = self.cfg.input_patch_size
        if fbank.dim() != 3 or fbank.shape[1] < patch or fbank.shape[2] < patch:
            raise ValueError(f"BEATs: expected fbank [B, frames, mel] with at least {patch} frames and mel bins "
                             f"(one {patch}x{patch} patch; {patch} frames = {(400 + (patch - 1) * 160) / 16000:.3f} s"
                             f" at 16 kHz), got shape {tuple(fbank.shape)}")
        x = self.patch_embedding(fbank.unsqueeze(1))  # [B, E, frames // P, mel // P]
        x = self.layer_norm(x.flatten(2).transpose(1, 2))  # tokens t * (mel // P) + f
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(self.dropout_input(x), padding)
