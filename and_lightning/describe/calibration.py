"""Module B (spec §7): calibrate a neuron's high-activation summary against its low-activation summary.

Both summaries are split into sentences (junk and short sentences dropped), embedded, and every high
sentence AND every low sentence that takes part in a cross pair with cosine > threshold is removed:
what also describes the least-activating clips does not explain the neuron.

Threshold: DEFAULT_THRESHOLD = 0.9 (the value the paper's Module-B figure shows). Measured on the offline
default (synthetic set, acoustic-v2 captions, extractive summaries, MiniLM; 883 high-summary sentences of 250
neurons, a sentence counted "shared" when its content words all occur in one low-summary sentence): at 0.9, 98 %
of the removed sentences are shared descriptors and 91 % of the shared ones are removed; 1.6 % of the neurons
are left with an empty calibrated summary. ORIGINAL_THRESHOLD = 0.5 is what the original code ran (its `args.py`
default 0.6 was never passed): on the same summaries it removes 488 sentences of which only 65 % are shared and
empties 11 % of the neurons (sentences like "Most of them are X." share their template). Use it for a faithful
reproduction.
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from torch import Tensor

from and_lightning.describe.lexicon import attribute_values, tokens
from and_lightning.describe.sentences import JUNK_PHRASES, summary_sentences

DEFAULT_THRESHOLD = 0.9
ORIGINAL_THRESHOLD = 0.5  # the original code's value (faithful reproduction)
ArrayLike = np.ndarray | Tensor


class SentenceEncoder(Protocol):
    def encode(self, texts: list[str]) -> Tensor:
        """[len(texts), d] unit-norm embeddings."""


@dataclass
class Calibrated:
    """The surviving sentences (`high` is the calibrated summary S_h^c) and the removed ones."""

    high: list[str]
    low: list[str]
    removed_high: list[str]
    removed_low: list[str]


def cross_removal_masks(sim: ArrayLike, threshold: float) -> tuple[ArrayLike, ArrayLike]:
    """Keep-masks for rows (high sentences) and columns (low sentences) of a [H, L] similarity matrix:
    a row/column is dropped iff any of its entries is > threshold."""
    hit = sim > threshold
    return ~hit.any(1), ~hit.any(0)


@functools.lru_cache(maxsize=1 << 16)
def _values(sentence: str) -> frozenset[tuple[str, int]]:
    """The (attribute, value) pairs a sentence's words name (once per sentence and process: a summary sentence is
    compared with the low sentences of every neuron whose summary holds it)."""
    return frozenset(v for w in set(tokens(sentence)) for v in attribute_values(w))


def is_contrast(a: str, b: str) -> bool:
    """Whether two sentences differ in the value of an attribute: one names a value the other does not, and
    the other names another value of the same attribute ("loud and steady" / "quiet and steady")."""
    va, vb = _values(a), _values(b)
    only_a, only_b = va - vb, vb - va
    return any(name == other and i != j for name, i in only_a for other, j in only_b)


def _split(mask: np.ndarray, items: Sequence[str]) -> tuple[list[str], list[str]]:
    keep = [s for s, k in zip(items, mask.tolist()) if k]
    drop = [s for s, k in zip(items, mask.tolist()) if not k]
    return keep, drop


def _original_cross_removal(high: Sequence[str], low: Sequence[str], high_emb: ArrayLike, low_emb: ArrayLike,
                            threshold: float) -> tuple[list[str], list[str]]:
    """The original's loop (`sentence_utils.remove_mutual_information`), run as it ran: it removes sentences
    (by value, the first equal one) from the lists it is iterating over, while the embeddings it zips with
    are not removed, so after a removal later sentences are paired with other sentences' embeddings and some
    pairs are skipped. The cosine is its float32 numpy dot / (norm * norm)."""
    kept_high, kept_low = list(high), list(low)
    for a, ea in zip(kept_high, np.asarray(high_emb, np.float32)):
        for b, eb in zip(kept_low, np.asarray(low_emb, np.float32)):
            if (np.dot(ea, eb) / (np.linalg.norm(ea) * np.linalg.norm(eb))).item() > threshold:
                if a in kept_high:
                    kept_high.remove(a)
                if b in kept_low:
                    kept_low.remove(b)
    return kept_high, kept_low


def _removed(items: Sequence[str], kept: Sequence[str]) -> list[str]:
    left = Counter(kept)
    out = []
    for s in items:
        if left[s]:
            left[s] -= 1
        else:
            out.append(s)
    return out


def calibrate_sentences(
    high: Sequence[str], low: Sequence[str], high_emb: ArrayLike, low_emb: ArrayLike, threshold: float = DEFAULT_THRESHOLD,
    faithful: bool = False,
) -> Calibrated:
    """Cross-removal on already split and embedded sentences (embeddings unit-norm, rows aligned: float32 arrays or
    CPU tensors); contrasting pairs (`is_contrast`) never remove. `faithful`: the original's loop
    (`_original_cross_removal`) instead."""
    if len(high) != len(high_emb) or len(low) != len(low_emb):
        raise ValueError(
            f"sentences and embeddings differ in number: high {len(high)} vs {len(high_emb)}, low {len(low)} vs {len(low_emb)}"
        )
    if not high or not low:
        return Calibrated(list(high), list(low), [], [])
    if faithful:
        kh, kl = _original_cross_removal(high, low, high_emb, low_emb, threshold)
        return Calibrated(kh, kl, _removed(high, kh), _removed(low, kl))
    # numpy, not torch: a few sentences per neuron, where torch's per-call overhead is most of the cost
    sim = np.asarray(high_emb, np.float32) @ np.asarray(low_emb, np.float32).T
    for i, j in zip(*np.nonzero(sim > threshold)):
        if is_contrast(high[i], low[j]):
            sim[i, j] = -np.inf
    keep_h, keep_l = cross_removal_masks(sim, threshold)
    kh, dh = _split(keep_h, high)
    kl, dl = _split(keep_l, low)
    return Calibrated(kh, kl, dh, dl)


def calibrate_many(
    pairs: Sequence[tuple[str, str]],
    encoder: SentenceEncoder,
    threshold: float = DEFAULT_THRESHOLD,
    min_tokens: int = 5,
    junk_phrases: tuple[str, ...] = JUNK_PHRASES,
    faithful: bool = False,
) -> list[Calibrated]:
    """Module B for many neurons: `pairs` are (high summary, low summary) texts. All sentences are
    embedded in one `encoder.encode` call (the encoder de-duplicates), then each neuron is calibrated.
    `faithful`: the original's sentence split and removal loop (pass threshold=ORIGINAL_THRESHOLD too)."""
    sentences = {t: summary_sentences(t, min_tokens, junk_phrases, faithful) for pair in pairs for t in pair}
    split = [(sentences[h], sentences[l]) for h, l in pairs]
    unique = list(dict.fromkeys(s for hs, ls in split for s in (*hs, *ls)))
    emb = encoder.encode(unique).float().numpy() if unique else np.zeros((0, 1), np.float32)
    row = {s: i for i, s in enumerate(unique)}

    def embed(sentences: list[str]) -> np.ndarray:
        return emb[[row[s] for s in sentences]]

    return [calibrate_sentences(hs, ls, embed(hs), embed(ls), threshold, faithful) for hs, ls in split]


def calibrate(high_summary: str, low_summary: str, encoder: SentenceEncoder, threshold: float = DEFAULT_THRESHOLD,
              min_tokens: int = 5, faithful: bool = False) -> Calibrated:
    """Module B for one neuron."""
    return calibrate_many([(high_summary, low_summary)], encoder, threshold, min_tokens, faithful=faithful)[0]
