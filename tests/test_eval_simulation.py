"""Simulation score: the saved explain/score split, correlations by hand, the text and LLM simulators."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from and_lightning.analysis.llm_clips import sized
from and_lightning.analysis.simulation import (
    RATING_SCHEMA, correlations_of_many, llm_clip_choice, parse_ratings, pearson, simulation_report, spearman,
    text_predictions,
)
from and_lightning.analysis.split import load_or_make_split, make_split, score_masks
from and_lightning.describe.llm.openai_chat import OpenAIChatLLM
from openai_server import OpenAITestServer, last_user_text
from fakes import FakeBagOfWordsEncoder


def test_split_is_fixed_disjoint_and_saved(tmp_path):
    ids = [f"c{i}" for i in range(10)]
    a = make_split(ids, 0.3, seed=1)
    assert len(a["score"]) == 3 and sorted(a["explain"] + a["score"]) == sorted(ids)
    assert not set(a["explain"]) & set(a["score"]) and a["score"] == [c for c in ids if c in a["score"]]
    assert make_split(ids, 0.3, seed=1) == a and make_split(ids, 0.3, seed=2)["score"] != a["score"]
    saved, path = load_or_make_split(tmp_path, ids, 0.3, seed=1)
    assert saved == a and json.loads(path.read_text()) == a
    assert load_or_make_split(tmp_path, ids, 0.3, seed=1)[0] == a  # read back, not remade
    tampered = dict(a, score=a["score"][:1])
    path.write_text(json.dumps(tampered))
    with pytest.raises(ValueError, match="does not cover"):
        load_or_make_split(tmp_path, ids, 0.3, seed=1)
    with pytest.raises(ValueError, match="score_fraction"):
        make_split(ids, 1.0, seed=0)


def test_correlations_hand_computed():
    # dx = [-1, 0, 1], dy = [-7/3, -1/3, 8/3]: r = 5 / sqrt(2 * 38/3)
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0])) == pytest.approx(5 / math.sqrt(2 * 38 / 3))
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0])) == pytest.approx(1.0)
    # ties share ranks: x ranks [1.5, 1.5, 3], y ranks [3, 2, 1] -> r = -sqrt(3)/2
    assert spearman(np.array([1.0, 1.0, 2.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-math.sqrt(3) / 2)
    assert math.isnan(pearson(np.ones(4), np.arange(4.0))) and math.isnan(pearson(np.ones(1), np.ones(1)))


def test_vectorised_neuron_correlations_equal_the_scalar_ones():
    rng = np.random.default_rng(0)
    pred = np.round(rng.normal(size=(7, 30)), 1)  # rounding makes ties
    actual = np.round(rng.normal(size=(30, 7)), 1)
    masks = rng.random((7, 30)) < 0.7
    masks[5, 2:] = False  # 2 clips left: Pearson of 2 points is +-1
    masks[6, :] = False  # nothing to score
    pred[4] = 1.0  # constant prediction
    got = correlations_of_many([pred], actual, masks)[0]
    for m in range(7):
        k = masks[m]
        want = (pearson(pred[m, k], actual[k, m]), spearman(pred[m, k], actual[k, m]))
        np.testing.assert_allclose(got[m], want, rtol=1e-10, atol=1e-12, err_msg=f"neuron {m}")
    assert np.isnan(got[4]).all() and np.isnan(got[6]).all() and abs(got[5, 0]) == pytest.approx(1.0)


def test_score_mask_and_llm_clip_choice():
    rec = {"top_clips": ["b"], "bottom_clips": ["d"]}
    assert score_masks([rec], ["a", "b", "c", "d"], True).tolist() == [[True, False, True, False]]
    assert score_masks([rec], ["a", "b"], False).tolist() == [[True, True]]
    actual = np.array([5.0, 9.0, 1.0, 8.0, 7.0, 0.0])
    allowed = np.array([True, False, True, True, True, True])
    chosen = llm_clip_choice(actual, allowed, 4, np.random.default_rng(0))
    assert len(chosen) == 4 and 1 not in chosen and {3, 4} <= set(chosen.tolist())  # 2 best allowed + 2 random
    assert parse_ratings({"ratings": [{"clip": 2, "rating": 7}, {"clip": 9, "rating": 1}]}, 3)[1] == 7.0
    assert np.isnan(parse_ratings('{"ratings": []}', 2)).all()


def toy_dissection(n: int = 120, seed: int = 0):
    """Clips are loud or quiet and bright or dark; neuron u responds to one property and is described by it."""
    rng = np.random.default_rng(seed)
    loud, bright = rng.random(n) < 0.5, rng.random(n) < 0.5
    ids = [f"c{i}" for i in range(n)]
    captions = {c: f"a {'loud' if lo else 'quiet'} and {'bright' if b else 'dark'} sound"
                for c, lo, b in zip(ids, loud, bright)}
    props = [loud, ~loud, bright, ~bright]
    acts = np.stack(props, axis=1).astype(float) + rng.normal(0, 0.3, (n, 4))
    words = ["loud", "quiet", "bright", "dark"]
    records = []
    for u in range(4):
        order = np.argsort(-acts[:, u])
        records.append({"layer": "L", "unit": u, "description": f"{words[u]} sounds",
                        "top_clips": [ids[i] for i in order[:5]], "bottom_clips": [ids[i] for i in order[-5:]]})
    return ids, captions, acts, records


def test_text_simulator_beats_shuffled_descriptions():
    ids, captions, acts, records = toy_dissection()
    split = make_split(ids, 0.5, seed=0)
    pred = text_predictions(["loud sounds"], ["a loud sound", "a quiet sound"], FakeBagOfWordsEncoder())
    assert pred[0, 0] > pred[0, 1]
    rows, per_neuron, dists = simulation_report(records, {"L": acts}, ids, captions, split,
                                                FakeBagOfWordsEncoder(), shuffles=5, seed=0)
    (row,) = rows
    assert row["pearson"] > 0.7 and row["spearman"] > 0.6 and row["pearson"] > row["pearson_shuffled"] + 0.5
    assert row["score_clips"] < 60  # neurons are never scored on their own top / bottom clips
    assert set(per_neuron) == {("L", u) for u in range(4)} and per_neuron[("L", 0)]["sim_pearson"] > 0.7
    real, shuffled = dists["L"]  # the per-unit values behind the row: real 4 units, shuffled 5 x 4
    assert real.tolist() == [per_neuron[("L", u)]["sim_pearson"] for u in range(4)] and shuffled.shape == (20,)
    assert row["pearson_shuffled"] == pytest.approx(np.nanmean(shuffled))


def test_llm_simulator_through_a_real_client(tmp_path):
    ids, captions, acts, records = toy_dissection(n=60)
    split = make_split(ids, 0.5, seed=0)

    def answer(body):  # rates 10 when the explanation's first word is in the caption
        text = last_user_text(body)
        word = text.split("Neuron explanation: ")[1].split()[0]
        lines = [l for l in text.split("Clips:\n")[1].splitlines() if l.strip()]
        ratings = [{"clip": int(l.split(".")[0]), "rating": 10 if word in l else 0} for l in lines]
        return json.dumps({"ratings": ratings})

    with OpenAITestServer(answer=answer) as server:
        llm = OpenAIChatLLM(model="test-model", base_url=server.base_url, cache_path=str(tmp_path / "llm.sqlite"),
                            api_key_env="AND_TEST_API_KEY", timeout=5.0)
        rows, _, _ = simulation_report(records, {"L": acts}, ids, captions, split, None, llm=llm, llm_clips=10,
                                    llm_chunk=5, seed=0)
        bodies = server.bodies()
    (row,) = rows
    assert row["predictor"] == "llm" and row["pearson"] > 0.7 and row["pearson"] > row["pearson_shuffled"] + 0.5
    # 4 neurons x 10 clips in chunks of 5, for the real and for the shuffled descriptions (duplicates sent once)
    assert 8 < len(bodies) <= 16
    assert all(b["response_format"]["json_schema"]["schema"] == sized(RATING_SCHEMA, 5) for b in bodies)


def test_missing_captions_is_a_clear_error():
    ids, captions, acts, records = toy_dissection(n=20)
    with pytest.raises(ValueError, match="captions of >= 3 score clips"):
        simulation_report(records, {"L": acts}, ids, {}, make_split(ids, 0.5, 0), FakeBagOfWordsEncoder())
