"""CLIP-Dissect similarity functions between clip-concept scores and neuron activations (spec §5.1).

Every function maps P [N, C] (a score for each of N probing clips and C concepts) and A [N, M] (the
activations of M neurons on the same N clips) to S [M, C], higher = the neuron fits the concept better.
They are pure, vectorised torch functions; `wpmi` / `soft_wpmi` normalise their marginal term over the
neurons of ONE call, so call them once per layer with the whole layer's activation matrix.
`faithful=True` computes what the original code computes, bit for bit on the same inputs (its `similarity.py`,
bugs included; tests/test_faithful_reference.py holds its outputs).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from and_lightning.store.activations import top_clip_index

# Elements of the [k, chunk, C] gather tensor built at once by the top-k functions (bounds memory).
_GATHER_BUDGET = 1 << 24


def _check(P: Tensor, A: Tensor) -> tuple[Tensor, Tensor]:
    if P.ndim != 2 or A.ndim != 2:
        raise ValueError(f"expected P [N, C] and A [N, M], got shapes {tuple(P.shape)} and {tuple(A.shape)}")
    if P.shape[0] != A.shape[0]:
        raise ValueError(f"P and A must have the same number of clips (rows): {P.shape[0]} != {A.shape[0]}")
    if P.shape[0] == 0:
        raise ValueError("P and A have no clips (0 rows)")
    return P.float(), A.to(device=P.device, dtype=torch.float32)


def cos(P: Tensor, A: Tensor, faithful: bool = False) -> Tensor:
    """Cosine over clips: S[m, c] = <A[:, m], P[:, c]> / (||A[:, m]|| ||P[:, c]||).

    A column of zeros has no direction; its similarities are 0 (`faithful`: NaN, as the original's 0 / 0).
    """
    P, A = _check(P, A)
    if faithful:
        return (A / A.norm(dim=0, keepdim=True)).T @ (P / P.norm(dim=0, keepdim=True))
    Pn = P / P.norm(dim=0, keepdim=True).clamp_min(torch.finfo(P.dtype).tiny)
    An = A / A.norm(dim=0, keepdim=True).clamp_min(torch.finfo(A.dtype).tiny)
    return An.T @ Pn


def cos_cubed(P: Tensor, A: Tensor, min_norm: float = 1e-3) -> Tensor:
    """CLIP-Dissect's cos^3, the paper's DB similarity.

    X' = (X - mean_over_clips(X))^3 (element-wise), X'' = X' / max(||X'||_col, min_norm) for X in {P, A};
    S = A''^T P''. Centring makes it a correlation of the cubed deviations, which stresses the extremes.
    """
    P, A = _check(P, A)

    def prep(X: Tensor) -> Tensor:
        X = (X - X.mean(dim=0, keepdim=True)) ** 3
        return X / X.norm(dim=0, keepdim=True).clamp_min(min_norm)

    return prep(A).T @ prep(P)


def _concept_probs(P: Tensor, a: float, p_is_prob: bool, faithful: bool) -> Tensor:
    """Q = P if P is already a distribution over concepts, else softmax(a * P) over concepts.

    `faithful=True` always applies the softmax, as the original code did even to DB's probabilities
    (the double softmax of spec §5.2 that flattens Q and gave DB-soft_wpmi 2 % top-1).
    """
    if p_is_prob and not faithful:
        return P
    return torch.softmax(a * P, dim=1)


def _marginal_pmi(log_p_c_given_n: Tensor, lam: float) -> Tensor:
    """S = log p(c|n) - lam * log p(c), log p(c) = logsumexp_n log p(c|n) - log M over the M neurons given."""
    M = torch.full((1,), log_p_c_given_n.shape[0], dtype=log_p_c_given_n.dtype, device=log_p_c_given_n.device)
    log_p_c = torch.logsumexp(log_p_c_given_n, dim=0, keepdim=True) - torch.log(M)
    return log_p_c_given_n - lam * log_p_c


def _summed_top_clip_terms(Q: Tensor, idx: Tensor, term: Callable[[Tensor], Tensor], faithful: bool) -> Tensor:
    """sum_r term(Q[idx[r, m], :])[r] for every neuron m -> [M, C], gathering chunks of neurons at once
    (`faithful`: one neuron at a time as the original, whose float sums differ in the last bits)."""
    k, M = idx.shape
    if faithful:
        return torch.cat([term(Q[idx[:, m:m + 1]]).sum(dim=0) for m in range(M)])  # [k, 1, C] each
    C = Q.shape[1]
    chunk = max(1, _GATHER_BUDGET // max(1, k * C))
    out = []
    for start in range(0, M, chunk):
        gathered = Q[idx[:, start:start + chunk]]  # [k, chunk, C]
        out.append(term(gathered).sum(dim=0))
    return torch.cat(out, dim=0)


def _pmi_on_top_clips(P: Tensor, A: Tensor, top_k: int, a: float, lam: float, p_is_prob: bool, faithful: bool,
                      tiebreak: Tensor | None, term: Callable[[Tensor], Tensor]) -> Tensor:
    """S = log p(c|m) - lam * log p(c) with log p(c|m) = sum over neuron m's top min(top_k, N) clips of term(Q[j, c])
    (Q: `_concept_probs`; `term` gets [k, neurons, C], rank r in row r)."""
    P, A = _check(P, A)
    Q = _concept_probs(P, a, p_is_prob, faithful)
    idx = top_clip_index(A, min(top_k, A.shape[0]), tiebreak, faithful)
    return _marginal_pmi(_summed_top_clip_terms(Q, idx, term, faithful), lam)


def wpmi(P: Tensor, A: Tensor, top_k: int = 28, a: float = 2.0, lam: float = 0.6, min_prob: float = 1e-7,
         p_is_prob: bool = False, faithful: bool = False, tiebreak: Tensor | None = None) -> Tensor:
    """Weighted pointwise mutual information (CLIP-Dissect).

    Q = softmax(a * P) over concepts (or Q = P when `p_is_prob`, see `_concept_probs`);
    log p(c|m) = sum over the top_k clips j of neuron m of log(Q[j, c] + min_prob);
    log p(c) = logsumexp_m log p(c|m) - log M over the neurons of this call (one layer);
    S = log p(c|m) - lam * log p(c).
    top_k is clamped to N when there are fewer clips. A neuron's top clips are ranked by `top_clip_index` (equal
    activations by `tiebreak` [N, M], the store's tie-break statistic, then the lower clip index).
    """
    return _pmi_on_top_clips(P, A, top_k, a, lam, p_is_prob, faithful, tiebreak, lambda q: torch.log(q + min_prob))


def soft_wpmi(P: Tensor, A: Tensor, top_k: int = 100, a: float = 10.0, lam: float = 1.0, min_prob: float = 1e-7,
              p_start: float = 0.998, p_end: float = 0.97, p_is_prob: bool = False, faithful: bool = False,
              tiebreak: Tensor | None = None) -> Tensor:
    """Soft WPMI (CLIP-Dissect), TAB's similarity.

    Q as in `wpmi`. The clip at rank r (0-based) of neuron m's top k clips is "in the concept" with
    probability p_r = p_start - (r / k) * (p_start - p_end);
    log p(c|m) = sum_r log(1 + p_r * (Q[j_r, c] - 1) + min_prob); log p(c) and S as in `wpmi` (lam=1).
    k = min(top_k, N): with fewer clips than top_k the schedule is spread over the clips there are.
    Top clips and `tiebreak` as in `wpmi`.
    """
    def term(q: Tensor) -> Tensor:
        k = q.shape[0]
        p_r = (p_start - torch.arange(k, dtype=q.dtype, device=q.device) / k * (p_start - p_end)).view(k, 1, 1)
        return torch.log(1 + p_r * (q - 1) + min_prob)

    return _pmi_on_top_clips(P, A, top_k, a, lam, p_is_prob, faithful, tiebreak, term)


class TooFewClipsError(ValueError):
    """rank_reorder asked for fewer than 2 top clips (too small a probing set for its top fraction)."""


def rank_reorder(
    P: Tensor,
    A: Tensor,
    top_fraction: float = 0.05,
    p: float = 3.0,
    scale_p: float = 0.5,
    faithful: bool = False,
    generator: torch.Generator | None = None,
    tiebreak: Tensor | None = None,
) -> Tensor:
    """CLIP-Dissect's rank-reorder score on each neuron's top n = int(N * top_fraction) clips.

    With t the neuron's top activations (descending) and s_j = P[clip_j, c] on those clips, each clip j
    is given the activation of the rank its concept score has (t sorted ascending, indexed by the
    ascending rank of s_j); error = mean_j |t_j - t_asc[rank(s_j)]|^p / baseline, where
    baseline = E_pi mean_j |t_j - t_pi(j)|^p over random permutations pi = (1/n^2) sum_ij |t_i - t_j|^p
    (exact); S = -error / max(mean_j s_j, 1e-6)^scale_p. n < 2 raises. Top clips and `tiebreak` as in `wpmi`.
    `faithful=True` runs the original instead (`_rank_reorder_original`).
    """
    P, A = _check(P, A)
    if faithful:
        return _rank_reorder_original(P, A, top_fraction, p, scale_p, generator)
    n = int(A.shape[0] * top_fraction)
    M, C = A.shape[1], P.shape[1]
    if n < 2:
        raise TooFewClipsError(f"rank_reorder needs >= 2 top clips; int({A.shape[0]} * {top_fraction}) = {n}")
    idx = top_clip_index(A, n, tiebreak)  # [n, M]
    t = A.gather(0, idx)  # [n, M] descending
    t_asc = t.flip(0)
    out = torch.empty(M, C, device=P.device)
    chunk = max(1, _GATHER_BUDGET // (n * max(n, C)))
    for start in range(0, M, chunk):
        sl = slice(start, start + chunk)
        tc, tc_asc = t[:, sl], t_asc[:, sl]
        # all-equal activations: zero error and zero baseline give S = 0, not NaN
        baseline = (tc.unsqueeze(0) - tc.unsqueeze(1)).abs().pow(p).mean(dim=(0, 1)).clamp_min(1e-12)
        s = P[idx[:, sl]]  # [n, chunk, C] concept scores of each neuron's top clips
        ranks = torch.argsort(torch.argsort(s, dim=0, stable=True), dim=0, stable=True)  # ascending rank
        reorg = tc_asc.unsqueeze(-1).expand_as(s).gather(0, ranks)
        err = (tc.unsqueeze(-1) - reorg).abs().pow(p).mean(dim=0) / baseline.unsqueeze(-1)
        out[sl] = -err / s.mean(dim=0).clamp_min(1e-6).pow(scale_p)
    return out


def _rank_reorder_original(P: Tensor, A: Tensor, top_fraction: float, p: float, scale_p: float,
                           generator: torch.Generator | None, concept_batch: int = 1500) -> Tensor:
    """The original's rank_reorder, neuron by neuron, with its three departures from the definition above:
    clip j gets t_asc[order_j] with order = argsort(s) (one argsort: the index of the j-th smallest score, not
    the rank of s_j); the baseline is the mean over 5 random shuffles drawn per neuron (from `generator`, or
    torch's global generator as the original); the divisor is relu(mean_j s_j) ** scale_p, so a concept with a
    mean score <= 0 gets -inf (or NaN). n < 2 gives NaN scores (the original's hidden-layer DB: int(5 * 0.05) = 0)."""
    n = int(A.shape[0] * top_fraction)
    idx = top_clip_index(A, n, faithful=True)
    top = A.gather(0, idx)
    C = P.shape[1]
    rows = []
    for m in range(A.shape[1]):
        s = P[idx[:, m]]  # [n, C]
        avg = torch.relu(s.mean(dim=0, keepdim=True))
        order = torch.argsort(s, dim=0)
        target = top[:, m:m + 1]
        t_asc = target.flip(0)
        shuffled = torch.cat([t_asc[torch.randperm(n, generator=generator)] for _ in range(5)], dim=1)
        baseline = torch.mean((t_asc - shuffled).abs() ** p)
        err = [torch.nanmean((target - t_asc[order[:, i:i + concept_batch], 0]).abs() ** p, dim=0, keepdim=True)
               / baseline for i in range(0, C, concept_batch)]
        rows.append(torch.cat(err, dim=1) / avg ** scale_p)
    return -torch.cat(rows, dim=0)


SIMILARITIES: dict[str, Callable[..., Tensor]] = {
    "cos": cos,
    "cos_cubed": cos_cubed,
    "wpmi": wpmi,
    "soft_wpmi": soft_wpmi,
    "rank_reorder": rank_reorder,
}
# the similarities that score each neuron on its top clips (`top_clip_index`, so they take a `tiebreak`)
TOP_CLIP_SIMILARITIES = ("wpmi", "soft_wpmi", "rank_reorder")


def similarity(name: str, P: Tensor, A: Tensor, *, p_is_prob: bool = False, faithful: bool = False,
               tiebreak: Tensor | None = None, **params) -> Tensor:
    """Dispatch by name; passes `p_is_prob` / `faithful` / `tiebreak` to the functions they change, `params` as
    given."""
    if name not in SIMILARITIES:
        raise ValueError(f"unknown similarity {name!r}; expected one of {sorted(SIMILARITIES)}")
    fn = SIMILARITIES[name]
    if name in TOP_CLIP_SIMILARITIES:
        params = {"faithful": faithful, "tiebreak": tiebreak, **params}
    if name in ("wpmi", "soft_wpmi"):
        params = {"p_is_prob": p_is_prob, **params}
    return fn(P, A, **params)
