"""A TopK / BatchTopK sparse autoencoder from sae-lens, with the inference encoding a splice needs.

sae-lens trains it (`training_forward_pass`: MSE + the TopK auxiliary loss that revives dead features); this
module only adds what the library leaves to its runners: per-token inference codes that do not depend on the
other items of a batch (BatchTopK becomes a JumpReLU at its learned threshold, as sae-lens saves it), and a
checkpoint of plain tensors + plain settings, loaded with `weights_only` (never a pickled object).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

KINDS = ("topk", "batchtopk")


def sae_settings(cfg: Mapping[str, Any], d_in: int) -> dict[str, Any]:
    """The SAE's architecture from a `conf/sae/` node and the layer width (ValueError naming a bad field)."""
    kind, expansion, k = cfg.get("kind"), cfg.get("expansion"), cfg.get("k")
    if kind not in KINDS:
        raise ValueError(f"sae.kind={kind!r}: expected one of {', '.join(KINDS)}")
    if not isinstance(expansion, (int, float)) or expansion <= 0:
        raise ValueError(f"sae.expansion={expansion!r}: expected a number > 0 (features = expansion x layer width)")
    d_sae = max(1, int(round(expansion * d_in)))
    if not isinstance(k, int) or not 1 <= k <= d_sae:
        raise ValueError(f"sae.k={k!r}: expected an integer between 1 and the number of features ({d_sae})")
    return {"kind": kind, "d_in": int(d_in), "d_sae": d_sae, "k": int(k)}


class SparseAutoencoder(nn.Module):
    """`encode(x [..., d_in]) -> codes [..., d_sae]` (non-negative, sparse), `decode_delta(codes)` = codes @ W_dec
    without the bias (a change of codes as a change of the input), `reconstruct(x)`."""

    def __init__(self, kind: str, d_in: int, d_sae: int, k: int):
        super().__init__()
        from sae_lens import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, TopKTrainingSAE,
                              TopKTrainingSAEConfig)

        self.settings = {"kind": kind, "d_in": d_in, "d_sae": d_sae, "k": k}
        cls, config = ((TopKTrainingSAE, TopKTrainingSAEConfig) if kind == "topk" else
                       (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig))
        self.sae = cls(config(d_in=d_in, d_sae=d_sae, k=k, device="cpu", dtype="float32"))

    @property
    def d_sae(self) -> int:
        return self.settings["d_sae"]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes of each token of x [..., d_in]: TopK per token; BatchTopK in training mode, else a JumpReLU at
        the running threshold (a token's codes then never depend on the rest of its batch)."""
        if self.settings["kind"] == "topk" or self.training:
            return self.sae.encode(x)
        sae = self.sae
        hidden = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
        if sae.cfg.rescale_acts_by_decoder_norm:
            hidden = hidden * sae.W_dec.norm(dim=-1)
        return hidden * (hidden > sae.topk_threshold.to(hidden.dtype))

    def decode_delta(self, codes: torch.Tensor) -> torch.Tensor:
        """What `codes` add to the reconstruction (decode without the bias): linear in the codes."""
        sae = self.sae
        w = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True) if sae.cfg.rescale_acts_by_decoder_norm else sae.W_dec
        return codes @ w

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_delta(self.encode(x)) + self.sae.b_dec

    def save(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{path}.tmp")
        torch.save({"settings": dict(self.settings), "state_dict": self.state_dict()}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SparseAutoencoder":
        """A saved SAE (plain tensors and settings only: `weights_only=True`)."""
        blob = torch.load(path, map_location="cpu", weights_only=True)
        sae = cls(**{k: blob["settings"][k] for k in ("kind", "d_in", "d_sae", "k")})
        sae.load_state_dict(blob["state_dict"])
        return sae.eval()
