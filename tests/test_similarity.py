"""CLIP-Dissect similarity functions against hand-computed values on tiny matrices, plus properties."""
import math

import pytest
import torch

from and_lightning.describe import similarity as sim_mod
from and_lightning.describe.similarity import cos, cos_cubed, rank_reorder, similarity, soft_wpmi, wpmi

# 3 clips x 2 concepts; 2 neurons with opposite activation orders.
P = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
A = torch.tensor([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
# A probability matrix over 2 concepts for the (soft_)wpmi examples.
Q = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])


def test_cos_hand_computed():
    # column norms: P sqrt(2), sqrt(2); A sqrt(14), sqrt(14); dot products 4, 5 (neuron 0) and 4, 3 (neuron 1)
    expected = torch.tensor([[4 / math.sqrt(28), 5 / math.sqrt(28)], [4 / math.sqrt(28), 3 / math.sqrt(28)]])
    torch.testing.assert_close(cos(P, A), expected)


def test_cos_zero_column_is_zero_not_nan():
    S = cos(torch.tensor([[0.0, 1.0], [0.0, 2.0]]), torch.tensor([[1.0], [1.0]]))
    assert S[0, 0] == 0 and torch.isfinite(S).all()


def test_cos_cubed_hand_computed():
    # P centred: [1/3,-2/3,1/3], [-2/3,1/3,1/3]; cubed and normalised: [1,-8,1]/sqrt(66), [-8,1,1]/sqrt(66).
    # A centred: [-1,0,1], [1,0,-1]; cubed and normalised: [-1,0,1]/sqrt(2), [1,0,-1]/sqrt(2).
    s = 9 / math.sqrt(132)
    expected = torch.tensor([[0.0, s], [0.0, -s]])
    torch.testing.assert_close(cos_cubed(P, A), expected, atol=1e-6, rtol=1e-6)


def test_cos_cubed_constant_column_clamped_to_zero():
    P3 = torch.cat([P, torch.full((3, 1), 5.0)], dim=1)  # centred to 0, norm clamped to min_norm
    S = cos_cubed(P3, A)
    assert torch.equal(S[:, 2], torch.zeros(2))
    torch.testing.assert_close(S[:, :2], cos_cubed(P, A))


def test_wpmi_hand_computed_probabilities():
    # top-2 clips: neuron 0 (acts 1,2,3) -> clips 2,1; neuron 1 (acts 3,2,1) -> clips 0,1
    l0 = [math.log(0.2 * 0.9), math.log(0.8 * 0.1)]
    l1 = [math.log(0.5 * 0.9), math.log(0.5 * 0.1)]
    marg = [math.log((0.45 + 0.18) / 2), math.log((0.05 + 0.08) / 2)]
    lam = 0.6
    expected = torch.tensor([[l0[c] - lam * marg[c] for c in range(2)], [l1[c] - lam * marg[c] for c in range(2)]])
    S = wpmi(Q, A, top_k=2, lam=lam, min_prob=0.0, p_is_prob=True)
    torch.testing.assert_close(S, expected)


def test_wpmi_faithful_applies_the_second_softmax():
    # faithful: Q' = softmax(2 * Q) even though Q is already a probability (the original's double softmax)
    def sm(x, y):
        return [math.exp(2 * x) / (math.exp(2 * x) + math.exp(2 * y)), math.exp(2 * y) / (math.exp(2 * x) + math.exp(2 * y))]

    q = [sm(0.5, 0.5), sm(0.9, 0.1), sm(0.2, 0.8)]
    l0 = [math.log(q[2][c] * q[1][c]) for c in range(2)]
    l1 = [math.log(q[0][c] * q[1][c]) for c in range(2)]
    marg = [math.log((math.exp(l0[c]) + math.exp(l1[c])) / 2) for c in range(2)]
    expected = torch.tensor([[l0[c] - 0.6 * marg[c] for c in range(2)], [l1[c] - 0.6 * marg[c] for c in range(2)]])
    S = wpmi(Q, A, top_k=2, a=2.0, min_prob=0.0, p_is_prob=True, faithful=True)
    torch.testing.assert_close(S, expected)
    torch.testing.assert_close(S, wpmi(Q, A, top_k=2, a=2.0, min_prob=0.0, p_is_prob=False))
    assert not torch.allclose(S, wpmi(Q, A, top_k=2, a=2.0, min_prob=0.0, p_is_prob=True))


def test_soft_wpmi_hand_computed():
    # k=2, p_start 0.9, p_end 0.5 -> p_0 = 0.9, p_1 = 0.9 - 1/2 * 0.4 = 0.7; term = log(1 + p_r (q - 1))
    l0 = [math.log(0.28) + math.log(0.93), math.log(0.82) + math.log(0.37)]  # clips 2 (r=0), 1 (r=1)
    l1 = [math.log(0.55) + math.log(0.93), math.log(0.55) + math.log(0.37)]  # clips 0 (r=0), 1 (r=1)
    marg = [math.log((0.55 * 0.93 + 0.28 * 0.93) / 2), math.log((0.55 * 0.37 + 0.82 * 0.37) / 2)]
    expected = torch.tensor([[l0[c] - marg[c] for c in range(2)], [l1[c] - marg[c] for c in range(2)]])
    S = soft_wpmi(Q, A, top_k=2, p_start=0.9, p_end=0.5, min_prob=0.0, p_is_prob=True)
    torch.testing.assert_close(S, expected)


def test_rank_reorder_hand_computed():
    # one neuron, t = [3, 2, 1]; concept scores on clips 0..2: perfectly ordered, reversed, mixed
    Pr = torch.tensor([[0.6, 0.1, 0.3], [0.3, 0.3, 0.6], [0.1, 0.6, 0.1]])
    Ar = torch.tensor([[3.0], [2.0], [1.0]])
    # baseline = (1/9) sum_ij |t_i - t_j|^3 = 20/9; reversed: |[2,0,2]|^3 mean 16/3 -> err 2.4;
    # mixed: ranks [1,2,0] -> reorg [2,3,1], |[1,1,0]|^3 mean 2/3 -> err 0.3; mean score 1/3 each
    expected = torch.tensor([[0.0, -2.4 / math.sqrt(1 / 3), -0.3 / math.sqrt(1 / 3)]])
    torch.testing.assert_close(rank_reorder(Pr, Ar, top_fraction=1.0), expected)


def test_rank_reorder_faithful_indexes_by_the_argsort_not_the_rank():
    # issue 11 item 5b. t = [8, 4, 2, 1]; concept 0's scores have ascending ranks [1, 2, 3, 0] (argsort
    # [3, 0, 1, 2]), concept 1's ranks [3, 2, 0, 1] (argsort [2, 3, 1, 0]); t ascending = [1, 2, 4, 8].
    # rank (corrected): reorg0 = [2, 4, 8, 1] -> |[6, 0, -6, 0]|^3 mean 108; reorg1 = [8, 4, 1, 2] -> mean 0.5
    # argsort (original): reorg0 = [8, 1, 2, 4] -> |[0, 3, 0, -3]|^3 mean 13.5; reorg1 = [4, 8, 2, 1] -> mean 32
    # Both concepts have the same mean score and baseline, so S0 / S1 is the ratio of the errors.
    Pr = torch.tensor([[0.2, 0.4], [0.3, 0.3], [0.4, 0.1], [0.1, 0.2]])
    Ar = torch.tensor([[8.0], [4.0], [2.0], [1.0]])
    S = rank_reorder(Pr, Ar, top_fraction=1.0)
    assert float(S[0, 0] / S[0, 1]) == pytest.approx(108 / 0.5)
    F = rank_reorder(Pr, Ar, top_fraction=1.0, faithful=True, generator=torch.Generator().manual_seed(0))
    assert float(F[0, 0] / F[0, 1]) == pytest.approx(13.5 / 32)
    # the original's divisor is relu(mean score) ** 0.5: a concept scored <= 0 on the top clips gets -inf
    F = rank_reorder(-Pr, Ar, top_fraction=1.0, faithful=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(F, torch.full((1, 2), -float("inf")))


def test_cos_faithful_zero_column_is_nan():
    S = cos(torch.tensor([[0.0, 1.0], [0.0, 2.0]]), torch.tensor([[1.0], [1.0]]), faithful=True)
    assert torch.isnan(S[0, 0]) and S[0, 1] == pytest.approx(3 / (5 ** 0.5 * 2 ** 0.5))


def test_rank_reorder_too_few_clips():
    P5, A5 = torch.rand(5, 3), torch.rand(5, 2)
    with pytest.raises(ValueError, match="needs >= 2 top clips"):
        rank_reorder(P5, A5)
    assert torch.isnan(rank_reorder(P5, A5, faithful=True)).all()  # the original's K=5 NaN


def _naive_log_p(Qm, Am, k, term):
    """Per-neuron loop reference, written independently of the vectorised code."""
    rows = []
    for m in range(Am.shape[1]):
        order = sorted(range(Am.shape[0]), key=lambda j: (-float(Am[j, m]), j))[:k]
        rows.append(sum(term(r, Qm[j]) for r, j in enumerate(order)))
    return torch.stack(rows)


@pytest.mark.parametrize("budget", [1 << 24, 7])  # 7 elements forces one neuron per gather chunk
def test_vectorised_wpmi_matches_loop(monkeypatch, budget):
    monkeypatch.setattr(sim_mod, "_GATHER_BUDGET", budget)
    g = torch.Generator().manual_seed(0)
    Pm, Am = torch.rand(30, 4, generator=g), torch.randn(30, 6, generator=g)
    Qm = torch.softmax(2 * Pm, dim=1)
    log_p = _naive_log_p(Qm, Am, 5, lambda r, q: torch.log(q + 1e-7))
    expected = log_p - 0.6 * (torch.logsumexp(log_p, dim=0) - math.log(6))
    torch.testing.assert_close(wpmi(Pm, Am, top_k=5), expected)
    pr = [0.998 - r / 5 * (0.998 - 0.97) for r in range(5)]
    log_p = _naive_log_p(torch.softmax(10 * Pm, dim=1), Am, 5, lambda r, q: torch.log(1 + pr[r] * (q - 1) + 1e-7))
    expected = log_p - (torch.logsumexp(log_p, dim=0) - math.log(6))
    torch.testing.assert_close(soft_wpmi(Pm, Am, top_k=5), expected)


def test_wpmi_marginal_is_over_the_neurons_of_the_call():
    g = torch.Generator().manual_seed(1)
    Pm, Am = torch.rand(20, 3, generator=g), torch.randn(20, 4, generator=g)
    full = wpmi(Pm, Am, top_k=4)
    alone = wpmi(Pm, Am[:, :1], top_k=4)
    assert not torch.allclose(full[0], alone[0])  # the layer's other neurons change log p(c)
    # for a single neuron log p(c) = log p(c|n), so S = (1 - lam) log p(c|n)
    log_p = _naive_log_p(torch.softmax(2 * Pm, dim=1), Am[:, :1], 4, lambda r, q: torch.log(q + 1e-7))
    torch.testing.assert_close(alone, 0.4 * log_p)


def test_top_k_clamped_to_number_of_clips():
    S = soft_wpmi(Q, A, p_is_prob=True)  # top_k=100 > 3 clips
    assert S.shape == (2, 2) and torch.isfinite(S).all()


@pytest.mark.parametrize("name", ["cos", "cos_cubed", "wpmi", "soft_wpmi", "rank_reorder"])
def test_neuron_matching_a_concept_ranks_it_first(name):
    g = torch.Generator().manual_seed(2)
    N, C = 200, 6
    labels = torch.randint(0, C, (N,), generator=g)
    Pm = torch.nn.functional.one_hot(labels, C).float() * 0.8 + 0.1 * torch.rand(N, C, generator=g)
    # neuron m fires on clips of concept m (+ noise); shape [N, C] so S is [C, C]
    Am = torch.nn.functional.one_hot(labels, C).float() * 2 + 0.3 * torch.randn(N, C, generator=g)
    S = similarity(name, Pm, Am, top_fraction=0.1) if name == "rank_reorder" else similarity(name, Pm, Am)
    assert S.shape == (C, C)
    assert torch.equal(S.argmax(dim=1), torch.arange(C))


def test_dispatch_and_input_errors():
    with pytest.raises(ValueError, match="unknown similarity 'cosine'"):
        similarity("cosine", P, A)
    with pytest.raises(ValueError, match="same number of clips"):
        cos(P, A[:2])
    with pytest.raises(ValueError, match=r"expected P \[N, C\]"):
        cos(P[0], A)
