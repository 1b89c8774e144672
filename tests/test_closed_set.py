"""Module A: DB / TAB scoring on toy embeddings, ranking, last-layer metrics, ICL prompt and answer mapping."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from and_lightning.describe.closed_set import (
    concept_cosine,
    db_probs,
    db_scores,
    icl_prompt,
    map_to_concept,
    scores_from_p,
    tab_scores,
    tab_scores_matrix,
    top_concepts,
)
from fakes import FakeBagOfWordsEncoder

CONF = Path(__file__).resolve().parents[1] / "conf" / "concepts"


class FakeTableEncoder:
    """Returns fixed vectors for known strings (hand-chosen geometry)."""

    def __init__(self, table):
        self.table = {k: torch.tensor(v, dtype=torch.float32) for k, v in table.items()}

    def encode(self, texts):
        return F.normalize(torch.stack([self.table[t] for t in texts]), dim=-1)


def _toy(seed=0, N=60, C=4, d=8):
    """Clips with a concept label; caption/audio embeddings near their concept; neuron m fires on concept
    target[m]'s clips."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N) % C
    concept_emb = torch.eye(C, d)
    caption_emb = concept_emb[labels] + 0.3 * torch.randn(N, d, generator=g)
    target = [2, 0, 3]
    acts = torch.stack([(labels == t).float() * 3 + 0.5 * torch.randn(N, generator=g) for t in target], dim=1)
    return labels, concept_emb, caption_emb, acts, target


def test_db_probs_is_softmax_of_scaled_cosine():
    cap = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    con = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # cosines: row 0 [1, 0]; row 1 [1/sqrt2, 1/sqrt2] -> with scale 2: softmax([2, 0]), softmax([sqrt2, sqrt2])
    e = math.exp(2)
    expected = torch.tensor([[e / (e + 1), 1 / (e + 1)], [0.5, 0.5]])
    torch.testing.assert_close(db_probs(cap, con, scale=2.0), expected)


@pytest.mark.parametrize("sim", ["cos_cubed", "cos", "wpmi", "soft_wpmi", "rank_reorder"])
def test_db_picks_the_concept_the_neuron_follows(sim):
    _, concept_emb, caption_emb, acts, target = _toy()
    params = {"top_fraction": 0.2} if sim == "rank_reorder" else {}
    S = db_scores(acts, caption_emb, concept_emb, sim, **params)
    assert S.shape == (3, 4)
    assert S.argmax(dim=1).tolist() == target


def test_db_uses_p_once_and_faithful_scores_one_neuron_per_call_with_the_second_softmax():
    # issue 11 item 5c: the original's DB called wpmi / soft_wpmi once per neuron, so the marginal log p(c)
    # is that neuron's own log p(c|n): wpmi = (1 - 0.6) log p(c|n) and soft_wpmi (lam = 1) is exactly 0.
    _, concept_emb, caption_emb, acts, _ = _toy()
    P = db_probs(caption_emb, concept_emb)
    from and_lightning.describe.similarity import soft_wpmi, wpmi

    torch.testing.assert_close(db_scores(acts, caption_emb, concept_emb, "wpmi"), wpmi(P, acts, p_is_prob=True))
    Q = torch.softmax(2 * P, dim=1)  # the second softmax
    log_p = torch.stack([torch.log(Q[acts[:, m].argsort(descending=True)[:28]] + 1e-7).sum(dim=0)
                         for m in range(acts.shape[1])])
    torch.testing.assert_close(db_scores(acts, caption_emb, concept_emb, "wpmi", faithful=True), 0.4 * log_p)
    assert torch.equal(db_scores(acts, caption_emb, concept_emb, "soft_wpmi", faithful=True), torch.zeros(3, 4))
    assert not (soft_wpmi(P, acts, p_is_prob=True) == 0).all()  # scored per layer it is not


def test_faithful_top5_db_loses_the_concept_all_top_clips_share():
    # the 5 most active clips of neuron 0 are all concept 2: over those 5 clips alone P[:, 2] is ~constant,
    # so centring leaves nothing to correlate (spec §5.2); over all clips DB finds concept 2.
    _, concept_emb, caption_emb, acts, _ = _toy()
    S_all = db_scores(acts, caption_emb, concept_emb, "cos_cubed")
    S_top5 = db_scores(acts, caption_emb, concept_emb, "cos_cubed", faithful=True, faithful_top_k=5)
    assert S_all[0].argmax() == 2 and S_all[0, 2] > 0.5
    assert abs(float(S_top5[0, 2])) < 0.05
    with pytest.raises(ValueError, match="needs faithful=True"):
        db_scores(acts, caption_emb, concept_emb, "cos_cubed", faithful_top_k=5)


class FakeStore:
    """Stands in for an ActivationStore: layer -> activations [N, M]."""

    def __init__(self, acts):
        self._acts = acts

    def acts(self, layer):
        return self._acts[layer]


@pytest.mark.parametrize("faithful", [False, True])
def test_describe_restricts_only_faithful_db_hidden_layers_to_their_top5_clips(faithful):
    # spec §5.2: the original scored DB's hidden layers on each neuron's top-5 clips alone; TAB on all clips
    from omegaconf import OmegaConf

    from and_lightning.stages.describe import closed_set_scores

    _, concept_emb, emb, acts, _ = _toy()
    store = FakeStore({"conv1": acts.numpy(), "head": acts.numpy()})
    for method, P, p_is_prob in (("db", db_probs(emb, concept_emb), True),
                                 ("tab", tab_scores_matrix(emb, concept_emb), False)):
        dcfg = OmegaConf.load(CONF.parent / "describe" / "default.yaml")
        dcfg.faithful, dcfg.closed_set.method, dcfg.closed_set.similarity = faithful, method, "cos_cubed"
        all_clips = scores_from_p(acts, P, "cos_cubed", p_is_prob=p_is_prob, faithful=faithful)
        top5 = scores_from_p(acts, P, "cos_cubed", p_is_prob=p_is_prob, faithful=True, faithful_top_k=5)
        assert not torch.allclose(all_clips, top5)
        torch.testing.assert_close(closed_set_scores(store, "head", P, dcfg, p_is_prob, "head"), all_clips)
        expected = top5 if faithful and method == "db" else all_clips
        torch.testing.assert_close(closed_set_scores(store, "conv1", P, dcfg, p_is_prob, "head"), expected)


def test_tab_cosine_matrix_and_soft_wpmi_pick():
    labels, concept_emb, audio_emb, acts, target = _toy(seed=3)
    P = tab_scores_matrix(audio_emb, concept_emb)
    torch.testing.assert_close(P[0], F.normalize(audio_emb[0], dim=0) @ concept_emb.T)  # cos, no softmax
    S = tab_scores(acts, audio_emb, concept_emb)
    assert S.argmax(dim=1).tolist() == target


def test_scores_from_p_accepts_a_callable():
    P = torch.rand(10, 3)
    acts = torch.rand(10, 2)
    S = scores_from_p(acts, P, lambda p, a: a.T @ p, p_is_prob=False)
    torch.testing.assert_close(S, acts.T @ P)
    with pytest.raises(ValueError, match="unknown similarity"):
        scores_from_p(acts, P, "cosine", p_is_prob=False)


def test_top_concepts_ranks_with_stable_ties_and_nan_last():
    S = torch.tensor([[0.1, 0.9, 0.5, 0.9], [float("nan"), 0.2, 0.3, 0.1]])
    ranked = top_concepts(S, ["a", "b", "c", "d"], k=3)
    assert [n for n, _ in ranked[0]] == ["b", "d", "c"]
    assert ranked[0][0] == ("b", pytest.approx(0.9))
    assert [n for n, _ in ranked[1]] == ["c", "b", "d"]
    with pytest.raises(ValueError, match="concepts"):
        top_concepts(S, ["a", "b"])


def test_concept_cosine_hand_computed():
    enc = FakeTableEncoder({"dog": [1, 0], "cat": [0.6, 0.8], "rain": [0, 1]})
    # cos(dog, dog) = 1, cos(cat, rain) = 0.8 -> mean 0.9
    assert concept_cosine(["dog", "rain"], ["dog", "cat"], enc) == pytest.approx(0.9)
    with pytest.raises(TypeError, match="top-1 strings"):
        concept_cosine([["dog", "cat"]], ["dog"], enc)


def test_concept_sets_yaml():
    sets = {p.stem: yaml.safe_load(p.read_text()) for p in CONF.glob("*.yaml")}
    esc = sets["esc50"]["concepts"]
    assert len(esc) == 50 == len(set(esc)) and esc[:3] == ["dog", "rooster", "pig"] and esc[-1] == "hand_saw"
    assert esc.index("water_drops") == 15 and esc.index("door_wood_knock") == 30
    assert "engine_idling" in sets["urbansound8k"]["concepts"] and len(sets["urbansound8k"]["concepts"]) == 10
    assert sets["gtzan"]["concepts"][0] == "blues" and len(sets["gtzan"]["concepts"]) == 10
    assert sets["synth"]["concepts"] == ["pure_tone", "harmonic_tone", "rising_chirp", "falling_chirp", "noise_hiss",
                                         "low_rumble", "click_train", "tremolo_tone", "vibrato_tone", "percussive_hits"]
    for name, cfg in sets.items():
        assert cfg["name"] == name


def test_icl_prompt_demos_only_for_matching_concept_sets():
    esc = yaml.safe_load((CONF / "esc50.yaml").read_text())["concepts"]
    messages, schema = icl_prompt("All clips contain a dog barking.", esc)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "water_drops" in messages[0]["content"] and messages[-1]["content"] == "All clips contain a dog barking."
    assert json.loads(messages[2]["content"])["concept"] == "cat"
    assert json.loads(messages[4]["content"])["concept"] == "snoring"  # the original's "soring" typo fixed
    assert schema["required"] == ["concept", "reason"]
    gtzan_messages, _ = icl_prompt("Electric guitars.", ["blues", "rock"])
    assert [m["role"] for m in gtzan_messages] == ["system", "user"]


def test_map_to_concept_parsing_and_nearest():
    enc = FakeBagOfWordsEncoder()
    concepts = ["dog", "water_drops", "church_bells", "rain"]
    assert map_to_concept({"concept": "Water Drops", "reason": "x"}, concepts, enc) == "water_drops"
    assert map_to_concept('{"concept": "rain", "reason": "it\'s wet"}', concepts, enc) == "rain"
    # quotes and apostrophes in the reasoning do not override the Answer line (the original's bug)
    reply = "It's clearly 'rain'-like and \"wet\", but the barking decides.\nAnswer: dog"
    assert map_to_concept(reply, concepts, enc) == "dog"
    assert map_to_concept("a big dog howling", concepts, enc) == "dog"  # nearest by shared words
    with pytest.raises(ValueError, match="no 'concept' field"):
        map_to_concept({"answer": "dog"}, concepts, enc)
