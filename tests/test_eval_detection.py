"""Detection score: the metrics by hand, the balanced quantile sample, the text judge on a planted relation
(true > shuffled > generic = chance), the LLM judge through the real openai client, and the evaluate task."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from and_lightning.analysis.detection import (
    JUDGE_SCHEMA, detection_report, detection_sample, parse_judgements, unit_scores,
)
from and_lightning.analysis.judge_metrics import (
    average_precision, best_threshold, effect_correlation, f1_score, recall_per_quantile,
)
from and_lightning.analysis.llm_clips import sized
from and_lightning.analysis.split import make_split
from and_lightning.describe.llm.openai_chat import OpenAIChatLLM
from fakes import FakeBagOfWordsEncoder
from openai_server import OpenAITestServer, last_user_text
from test_eval_simulation import toy_dissection


def test_metrics_hand_computed():
    s, y = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0], bool)
    # t=.9: P 1, R .5; t=.8: R unchanged; t=.7: P 2/3, R 1 -> AP = .5 * 1 + .5 * 2/3
    assert average_precision(s, y) == pytest.approx(0.5 + 1 / 3)
    # tied scores enter together: t=.5: P 1/2, R 1/2; t=.2: P 2/3, R 1 -> .25 + 1/3
    assert average_precision(np.array([0.5, 0.5, 0.2]), np.array([1, 0, 1], bool)) == pytest.approx(0.25 + 1 / 3)
    assert average_precision(np.ones(8), np.arange(8) < 2) == pytest.approx(0.25)  # constant judge: positive rate
    assert math.isnan(average_precision(s, np.zeros(4, bool)))
    assert f1_score(np.array([1, 1, 0, 0], bool), y) == pytest.approx(0.5)  # TP 1, FP 1, FN 1
    assert f1_score(np.ones(4, bool), y) == pytest.approx(2 / 3)  # all "yes": TP 2, FP 2
    # balanced accuracy at t = .9, .8, .7, .6: 3/4, 1/2, 3/4, 1/2: the higher of the tied thresholds
    assert best_threshold(s, y) == pytest.approx(0.9)
    # t = .9 .. .5: (TPR + TNR) / 2 = 2/3, 5/6, 7/12, 3/4, 1/2 -> .8 (F1 would pick .6: 6/7 > 4/5)
    assert best_threshold(np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 1, 0, 1, 0], bool)) == pytest.approx(0.8)
    assert best_threshold(np.ones(4), y) == 1.0 and math.isnan(best_threshold(s, np.zeros(4, bool)))
    got = recall_per_quantile(np.array([1, 0, 1, 1, 0], bool), np.array([0, 0, 1, -1, -1]), 3)
    assert got[:2].tolist() == [0.5, 1.0] and math.isnan(got[2])
    # judge ranks 1 4 2 3, change ranks 1 3 2 4: sum d^2 = 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert effect_correlation(np.array([0.1, 0.4, 0.2, 0.3]), np.array([0.0, 2.0, 1.0, 5.0])) == pytest.approx(0.8)
    # tied changes share rank 1.5: centred ranks (-1.5 -.5 .5 1.5), (-1 -1 .5 1.5): 4.5 / sqrt(5 * 4.5) = 3 / sqrt(10)
    assert effect_correlation(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.0, 0.0, 1.0, 2.0])) == pytest.approx(
        3 / math.sqrt(10))
    assert effect_correlation(np.array([0.4, 0.3, 0.2]), np.array([0.0, 1.0, 3.0])) == pytest.approx(-1.0)
    assert effect_correlation(np.full(3, 0.5), np.array([0.0, 1.0, 3.0])) == 0.0  # a judge that separates nothing
    assert math.isnan(effect_correlation(np.array([0.1, 0.2]), np.zeros(2)))  # the edit changes no clip


def test_balanced_quantile_sample():
    acts = np.arange(10.0)
    idx, q = detection_sample(acts, np.ones(10, bool), 0.4, 2, 1, "random", np.random.default_rng(0))
    # positives: one of {9, 8} (quantile 0) and one of {7, 6} (quantile 1); 2 negatives below 6
    assert q.tolist() == [0, 1, -1, -1] and idx[0] in (8, 9) and idx[1] in (6, 7) and (idx[2:] < 6).all()
    idx, q = detection_sample(acts, np.ones(10, bool), 0.4, 2, 1, "low", np.random.default_rng(0))
    assert (idx[2:] < 4).all()  # the lowest 4
    allowed = np.ones(10, bool)
    allowed[9] = False
    idx, _ = detection_sample(acts, allowed, 0.4, 2, 2, "random", np.random.default_rng(0))
    assert 9 not in idx and sorted(idx[:4].tolist()) == [5, 6, 7, 8]
    # ties across the boundary are neither positive nor negative; a constant unit has no sample
    assert len(detection_sample(np.array([3.0, 3, 3, 1, 0]), np.ones(5, bool), 0.4, 1, 5, "random",
                                np.random.default_rng(0))[0]) == 0
    assert len(detection_sample(np.ones(6), np.ones(6, bool), 0.5, 1, 5, "random", np.random.default_rng(0))[0]) == 0


def test_unit_scores_drop_missing_judgements():
    got = unit_scores(np.array([1.0, np.nan, 0.0, 1.0]), np.array([0, 0, -1, -1]), 0.5, 1)
    # kept: (1, pos), (0, neg), (1, neg): AP = 1/2 (t=1: TP 1 of 2 seen), F1 = 2/3, positive share 1/3, recall 1
    np.testing.assert_allclose(got, [0.5, 2 / 3, 1 / 3, 1.0])


def planted(n: int = 200, generic: str | None = None):
    ids, captions, acts, records = toy_dissection(n=n)
    if generic is not None:
        records = [dict(r, description=generic) for r in records]
    return ids, captions, acts, records


def test_text_judge_ranks_true_above_shuffled_and_generic_at_chance():
    ids, captions, acts, records = planted()
    split = make_split(ids, 0.5, seed=0)
    # negatives among the lowest clips: none has the unit's property, so the true description separates them all
    rows, per_neuron, dists = detection_report(records, {"L": acts}, ids, captions, split, FakeBagOfWordsEncoder(),
                                               negatives="low", shuffles=5, seed=0)
    (row,) = rows
    assert row["auprc"] == 1.0 and row["f1"] == 1.0 and row["auprc"] > row["auprc_shuffled"] + 0.4
    # 4 quantiles x 5 positives + as many negatives, fewer where a unit's own top / bottom clips were held out
    assert row["positive_share"] == 0.5 and 36 <= row["clips_per_unit"] < 40 and row["recall_q1"] == 1.0
    assert set(per_neuron) == {("L", u) for u in range(4)} and per_neuron[("L", 0)]["det_auprc"] > 0.95
    assert len(dists["L"][0]) == 4 and len(dists["L"][1]) == 20
    # random negatives: half the clips have each property, so some negatives do too; still well above shuffled
    (rand,), _, _ = detection_report(records, {"L": acts}, ids, captions, split, FakeBagOfWordsEncoder(), seed=0)
    assert rand["auprc"] > rand["auprc_shuffled"] + 0.15 and rand["f1"] > rand["f1_shuffled"] + 0.1
    for generic in ("a sound", "xylophone"):  # names nothing / one constant text: every caption scores the same
        (g,), _, _ = detection_report(planted(generic=generic)[3], {"L": acts}, ids, captions, split,
                                      FakeBagOfWordsEncoder(), shuffles=2, seed=0)
        assert g["auprc"] == pytest.approx(0.5) and g["auprc_shuffled"] == pytest.approx(0.5), generic
        assert g["f1"] == pytest.approx(2 / 3) and g["auprc"] < row["auprc_shuffled"] + 0.3  # all "yes": chance F1


def test_llm_judge_through_a_real_client(tmp_path):
    ids, captions, acts, records = planted(n=120)
    split = make_split(ids, 0.5, seed=0)

    def answer(body):  # fires when the explanation's first word is in the caption
        text = last_user_text(body)
        word = text.split("Unit explanation: ")[1].split()[0]
        lines = [l for l in text.split("Clips:\n")[1].splitlines() if l.strip()]
        return json.dumps({"judgements": [{"clip": int(l.split(".")[0]), "fires": word in l} for l in lines]})

    with OpenAITestServer(answer=answer) as server:
        llm = OpenAIChatLLM(model="test-model", base_url=server.base_url, cache_path=str(tmp_path / "llm.sqlite"),
                            api_key_env="AND_TEST_API_KEY", timeout=5.0)
        rows, per_neuron, _ = detection_report(records, {"L": acts}, ids, captions, split, None, llm=llm,
                                               per_quantile=3, negatives="low", llm_chunk=6, seed=0)
        sent = len(server.bodies())
        detection_report(records, {"L": acts}, ids, captions, split, None, llm=llm, per_quantile=3,
                         negatives="low", llm_chunk=6, seed=0)
        assert len(server.bodies()) == sent  # the rerun is served from the cache
    (row,) = rows
    assert row["judge"] == "llm" and row["auprc"] == 1.0 and row["f1"] == 1.0 and row["auprc_shuffled"] < 0.8
    # 4 units x 24 clips in chunks of 6, for the real and the shuffled descriptions (duplicates sent once)
    # each request's schema asks for exactly its clips (at most 6; a small model's list closes there)
    clips = [len([x for x in last_user_text(b).split("Clips:\n")[1].splitlines() if x.strip()])
             for b in server.bodies()]
    assert 16 <= sent <= 32 and max(clips) == 6 and all(
        b["response_format"]["json_schema"]["schema"] == sized(JUDGE_SCHEMA, n) for b, n in zip(server.bodies(), clips))
    assert sized(JUDGE_SCHEMA, 6)["properties"]["judgements"] == {**JUDGE_SCHEMA["properties"]["judgements"],
                                                                  "minItems": 6, "maxItems": 6}
    assert parse_judgements('{"judgements": [{"clip": 2, "fires": true}]}', 2)[1] == 1.0


def test_bad_settings_name_the_field():
    ids, captions, acts, records = planted(n=40)
    split = make_split(ids, 0.5, seed=0)
    with pytest.raises(ValueError, match="evaluate.detection.negatives"):
        detection_report(records, {"L": acts}, ids, captions, split, FakeBagOfWordsEncoder(), negatives="high")
    with pytest.raises(ValueError, match="captions of >= 3 score clips"):
        detection_report(records, {"L": acts}, ids, {}, split, FakeBagOfWordsEncoder())


def test_task_settings_errors_name_the_field():
    from and_lightning.analysis.detection import Detection
    from and_lightning.analysis.split import split_settings
    from and_lightning.analysis.task import EvalContext

    with pytest.raises(ValueError, match="evaluate.detection.judge must be 'text' or 'llm', got 'gpt'"):
        Detection(judge="gpt").run(EvalContext())
    with pytest.raises(ValueError, match="evaluate.detection.judge=llm needs an LLM"):
        Detection(judge="llm").run(EvalContext())
    with pytest.raises(ValueError, match=r"evaluate.split.score_fraction must be in \(0, 1\), got 1.5"):
        split_settings({"score_fraction": 1.5})
    with pytest.raises(ValueError, match="evaluate.split.seed must be an integer"):
        split_settings({"seed": "x"})
    assert split_settings({"score_fraction": 0.25, "seed": 3, "exclude_described": False}) == (0.25, 3, False)
