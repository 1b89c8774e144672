"""Fakes shared by several test files (named as such: they stand in for real parts to keep tests fast)."""
from __future__ import annotations

import hashlib
import re

import torch
import torch.nn.functional as F


class FakeBagOfWordsEncoder:
    """Deterministic stand-in for a sentence encoder: normalised counts of hashed lower-case words."""

    def __init__(self, dim: int = 256):
        self.dim = dim

    def encode(self, texts):
        out = torch.zeros(len(texts), self.dim)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1
        return F.normalize(out, dim=-1)
