"""Table-2 protocol: hand-computed top-k / cosine, every similarity row, ICL through a real client, tables,
and the CREPE pitch evaluation (note arithmetic by hand, then the real pretrained tiny CREPE)."""
from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from and_lightning.analysis.last_layer import (
    ConceptScores, last_layer_accuracy, paper_reference_rows, similarity_rows, skipped_row, unit_ground_truth,
    with_paper_columns,
)
from and_lightning.analysis.pitch import (
    midi_to_hz, midi_to_name, note_concepts, note_to_midi, one_hot, pitch_table, semitone_errors, spoken_hz, tone,
    tone_set, unit_notes,
)
from and_lightning.analysis.tables import csv_text, markdown_table, write_table
from and_lightning.describe.closed_set import scores_from_p, top_concepts
from and_lightning.describe.llm.openai_chat import OpenAIChatLLM
from and_lightning.stages.evaluate import evaluate_stage
from openai_server import OpenAITestServer, last_user_text


class FakeTableEncoder:
    """Text encoder stand-in with hand-set 2-d embeddings for known names (others: hashed bag of words)."""

    VECTORS = {"a": [1.0, 0.0], "b": [0.6, 0.8], "c": [0.0, 1.0]}

    def encode(self, texts):
        out = []
        for t in texts:
            if t in self.VECTORS:
                out.append(torch.tensor(self.VECTORS[t] + [0.0] * 62))
                continue
            v = torch.zeros(64)
            for w in re.findall(r"[a-z0-9#]+", t.lower()):
                v[2 + int(hashlib.md5(w.encode()).hexdigest(), 16) % 62] += 1
            out.append(v)
        return F.normalize(torch.stack(out), dim=-1)


ENC = FakeTableEncoder()


def test_last_layer_accuracy_hand_computed():
    ranked = [["a", "b", "c", "d", "e"], ["b", "c", "a", "d", "e"], ["c", "a", "b", "d", "e"]]
    acc = last_layer_accuracy(ranked, ["a", "a", None], ENC)
    # unit 0 hits at rank 1, unit 1 at rank 3, unit 2 has no gt; cos = (cos(a,a) + cos(b,a)) / 2 = (1 + 0.6) / 2
    assert acc == pytest.approx({"top1": 50.0, "top5": 100.0, "cos": 0.8, "units": 2.0})
    assert math.isnan(last_layer_accuracy([["a"], ["b"]], ["a", "b"], ENC)["top5"])  # one answer (ICL)
    assert last_layer_accuracy([["b", "a"], ["b", "a"]], ["a", "b"], ENC, n_concepts=2)["top5"] == 100.0
    with pytest.raises(ValueError, match="no unit has a ground-truth concept"):
        last_layer_accuracy(ranked, [None, None, None], ENC)


def test_dissect_scores_describes_head_concepts_with_the_same_accuracy():
    """Issue 15: dissect's `dissect/last_layer_*` come from last_layer_accuracy too (fractions, not percent), so
    ICL's single answer per unit has no top-5 (it used to count as a top-5 hit)."""
    from and_lightning.dissection import _last_layer_metrics

    records = [{"layer": "head", "unit": u, "closed_method": "icl", "closed_concepts": [{"concept": c, "score": 1.0}]}
               for u, c in enumerate(["a", "c", "c"])]
    m = _last_layer_metrics(records, "head", ["a", "b", "c"], ["a", "b", "c"], ENC)
    # units 0 and 2 name their class, unit 1 (b) says c: cos = (1 + cos(b, c) + 1) / 3 = (1 + 0.8 + 1) / 3
    assert m["dissect/last_layer_top1"] == pytest.approx(2 / 3) and math.isnan(m["dissect/last_layer_top5"])
    assert m["dissect/last_layer_cos"] == pytest.approx(2.8 / 3)


def labelled_case():
    """6 clips, one-hot P over concepts a, b, c (two clips each); unit 0 fires on a, unit 1 on b, unit 2 on a."""
    labels = ["a", "a", "b", "b", "c", "c"]
    P = one_hot(labels, ["a", "b", "c"])
    acts = torch.tensor([[5.0, 0.0, 4.0], [4.0, 1.0, 5.0], [0.0, 5.0, 0.0],
                         [1.0, 4.0, 1.0], [0.5, 0.0, 0.2], [0.0, 0.5, 0.1]])
    return acts, P


def test_similarity_rows_hand_case_matches_the_shared_metric_helpers():
    acts, P = labelled_case()
    concepts, unit_gt = ["a", "b", "c"], ["a", "b", "c"]
    rows, per_neuron, _ = similarity_rows(acts, unit_gt, concepts, {"labels": ConceptScores(P, True)}, ENC,
                                          similarities=["cos", "cos_cubed", "wpmi", "soft_wpmi"],
                                          faithful=[False, True], params={"wpmi": {"top_k": 2}, "soft_wpmi": {"top_k": 2}},
                                          layer="head")
    # faithful only changes wpmi / soft_wpmi: no faithful cos rows
    assert [(r["similarity"], r["faithful"]) for r in rows] == [
        ("cos", False), ("cos_cubed", False), ("wpmi", False), ("wpmi", True), ("soft_wpmi", False),
        ("soft_wpmi", True)]
    cos_row = rows[0]
    # units 0 and 1 name their own concept; unit 2 (gt c) fires on a-clips: top-1 = a, cos(a, c) = 0
    assert cos_row["top1"] == pytest.approx(200 / 3) and cos_row["top5"] == 100.0
    assert cos_row["cos"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    # per unit: the same hits, one key per row
    assert [per_neuron[("head", u)]["ll/labels/cos/top1"] for u in range(3)] == [1.0, 1.0, 0.0]
    assert set(per_neuron[("head", 0)]) == {"ll/labels/cos/top1", "ll/labels/cos_cubed/top1", "ll/labels/wpmi/top1",
                                            "ll/labels/wpmi/faithful/top1", "ll/labels/soft_wpmi/top1",
                                            "ll/labels/soft_wpmi/faithful/top1"}
    for r in rows:
        S = scores_from_p(acts, P, r["similarity"], p_is_prob=True, faithful=r["faithful"],
                          **({"top_k": 2} if "wpmi" in r["similarity"] else {}))
        hits = [best[0][0] == g for best, g in zip(top_concepts(S, concepts, 1), unit_gt)]
        assert r["top1"] == pytest.approx(100 * sum(hits) / 3)
        tag = r["similarity"] + ("/faithful" if r["faithful"] else "")
        assert [per_neuron[("head", u)][f"ll/labels/{tag}/top1"] for u in range(3)] == [float(h) for h in hits]


def test_rank_reorder_on_too_few_clips_is_a_skipped_row_not_a_crash():
    acts, P = labelled_case()  # 6 clips: int(6 * 0.05) = 0 top clips
    rows, per_neuron, _ = similarity_rows(acts, ["a", "b", "c"], ["a", "b", "c"], {"labels": ConceptScores(P, True)},
                                          ENC, similarities=["cos", "rank_reorder"])
    assert [(r["similarity"], math.isnan(r["top1"])) for r in rows] == [("cos", False), ("rank_reorder", True)]
    assert rows[1]["note"] == "skipped: rank_reorder needs >= 2 top clips; int(6 * 0.05) = 0"
    assert set(per_neuron[("", 0)]) == {"ll/labels/cos/top1"}  # a skipped row scores no unit


def test_unit_ground_truth_and_paper_columns():
    assert unit_ground_truth(4, ["dog", "cat", "rain"], ["cat", "dog"]) == ["dog", "cat", None, None]
    rows = with_paper_columns([{"method": "db", "similarity": "cos_cubed"}, {"method": "icl", "similarity": "-"},
                               {"method": "tab", "similarity": "none"}])
    assert (rows[0]["paper_ast_top1"], rows[0]["paper_ast_top5"], rows[0]["paper_ast_cos"]) == (100.0, 100.0, 1.0)
    assert (rows[1]["paper_ast_top1"], rows[1]["paper_ast_cos"]) == (72.0, 0.83)
    assert math.isnan(rows[2]["paper_ast_top1"])
    ref = {(r["model"], r["method"]): r for r in paper_reference_rows()}
    assert (ref[("BEATs-frozen (paper)", "db")]["top1"], ref[("AST (paper)", "tab")]["top5"]) == (58.0, 100.0)


def test_tables_csv_and_markdown(tmp_path):
    rows = [{"m": "db|x", "v": 0.12345, "n": math.nan}, {"m": "icl", "v": 1.0, "n": None}]
    assert csv_text(rows, ["m", "v", "n"]) == "m,v,n\ndb|x,0.12345,\nicl,1.0,\n"
    assert markdown_table(rows, ["m", "v", "n"]) == ("| m | v | n |\n|---|---|---|\n| db\\|x | 0.123 | n/a |\n"
                                                     "| icl | 1.000 | n/a |\n")
    paths = write_table(rows, ["m", "v"], tmp_path / "sub" / "t", title="T")
    assert open(paths["md"]).read().startswith("# T\n\n| m | v |")


class FakeStore:
    """In-memory stand-in for ActivationStore (clip_ids, layers, acts) used to keep these tests fast."""

    def __init__(self, clip_ids, acts_by_layer):
        self.clip_ids = list(clip_ids)
        self._acts = acts_by_layer
        self.layers = {k: v.shape[1] for k, v in acts_by_layer.items()}

    def acts(self, layer):
        return self._acts[layer].astype(np.float16)


def test_last_layer_task_db_icl_through_a_real_client_and_skipped_tab(tmp_path):
    acts, _ = labelled_case()
    ids = [f"c{i}" for i in range(6)]
    store = FakeStore(ids, {"head": acts.numpy()})
    captions = dict(zip(ids, ["a", "a", "b", "b", "c", "c"]))
    records = [{"layer": "head", "unit": u, "summary_high": s} for u, s in enumerate(["all a", "all b", "all b"])]

    def answer(body):  # the "LLM" names the last word of the summary
        return json.dumps({"concept": last_user_text(body).split()[-1], "reason": "it says so"})

    with OpenAITestServer(answer=answer) as server:
        llm = OpenAIChatLLM(model="test-model", base_url=server.base_url, cache_path=str(tmp_path / "llm.sqlite"),
                            api_key_env="AND_TEST_API_KEY", timeout=5.0)
        cfg = {"_target_": "and_lightning.analysis.last_layer.LastLayer", "methods": ["db", "tab", "icl"],
               "similarities": ["cos"], "faithful": [False], "scale": 100.0}
        result = evaluate_stage({"tasks": ["last_layer"], "last_layer": cfg}, tmp_path, store=store, captions=captions,
                                records=records, class_names=["a", "b", "c"], concepts=["a", "b", "c"],
                                head_layer="head", encoder=ENC, llm=llm, model_name="toy")
        # units 1 and 2 share their summary: one request for both
        assert server.count == 2 and all("response_format" in b for b in server.bodies())
    lines = open(result.files["last_layer_csv"]).read().splitlines()
    assert lines[0].startswith("model,method,similarity,faithful,top1,top5,cos,units,note,paper_ast_top1")
    rows = {r.split(",")[1]: r.split(",") for r in lines[1:]}
    assert float(rows["db"][4]) == pytest.approx(200 / 3)  # as the hand case above (P from the captions)
    assert rows["tab"][8].startswith("skipped: no CLAP")
    assert float(rows["icl"][4]) == pytest.approx(200 / 3) and rows["icl"][5] == ""  # unit 2 answered "b"
    assert result.metrics["eval/last_layer/icl/-/top1"] == pytest.approx(200 / 3)
    assert skipped_row("icl", "x")["note"] == "skipped: x"


# ------------------------------------------------------------------------------------------------ pitch
def test_note_arithmetic_by_hand():
    assert (note_to_midi("A4"), note_to_midi("C4"), note_to_midi("C#2"), note_to_midi("B-1")) == (69, 60, 37, 11)
    assert midi_to_name(61) == "C#4" and midi_to_hz(69) == 440.0 and midi_to_hz(57) == pytest.approx(220.0)
    assert midi_to_hz(60) == pytest.approx(261.6256, abs=1e-4)
    assert note_concepts("A3", "C4") == ["A3", "A#3", "B3", "C4"]
    # 440 Hz = A4; +47 cents still A4; +54 cents is nearer A#4; 20 Hz is below the concept range
    assert unit_notes([440.0, 440 * 2 ** (47 / 1200), 440 * 2 ** (54 / 1200), 20.0], note_concepts("A3", "B4")) == \
        ["A4", "A4", "A#4", None]
    assert spoken_hz(466.16) == "470" and spoken_hz(98.0) == "98" and spoken_hz(2093.0) == "2100"
    assert semitone_errors(["A4", "C4"], ["A4", "A4"]) == {"semitone_mae": 4.5, "within_1": 50.0}
    with pytest.raises(ValueError, match="not a note name"):
        note_to_midi("H2")


def test_tones_have_their_level_pitch_and_detune():
    x = tone(440.0, "sine", 16000, 0.5, -20.0)
    assert 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))) == pytest.approx(-20.0, abs=0.01)
    spec = np.abs(np.fft.rfft(x))
    assert np.argmax(spec) * 16000 / len(x) == pytest.approx(440.0, abs=2.0)
    waves, notes, freqs = tone_set(["A3", "A4"], 3, 16000, 0.25, seed=1, detune_cents=30)
    assert waves.shape == (6, 4000) and notes == ["A3"] * 3 + ["A4"] * 3
    cents = 1200 * np.log2(freqs / np.repeat([220.0, 440.0], 3))
    assert np.all(np.abs(cents) <= 30) and np.any(np.abs(cents) > 1)
    again = tone_set(["A3", "A4"], 3, 16000, 0.25, seed=1, detune_cents=30)
    assert np.array_equal(again[0], waves)
    with pytest.raises(ValueError, match="detune_cents"):
        tone_set(["A4"], 1, 16000, 0.25, seed=0, detune_cents=60)


def test_real_tiny_crepe_output_units_name_their_pitch():
    from and_lightning.models.crepe import CrepeAdapter

    concepts = note_concepts("A3", "A4")
    rows = pitch_table({"crepe-tiny": CrepeAdapter("tiny", hop_length=2048)}, concepts, ENC, tones_per_note=2,
                       seconds=0.25, p_sources=["labels"], similarities=["cos", "cos_cubed"])
    assert [(r["model"], r["method"], r["similarity"]) for r in rows] == [
        ("crepe-tiny", "labels", "cos"), ("crepe-tiny", "labels", "cos_cubed")]
    for r in rows:
        assert r["units"] == 13 * 5  # 5 bins of 20 cents per note
        assert r["top1"] > 80.0 and r["semitone_mae"] < 0.3 and r["within_1"] == 100.0
