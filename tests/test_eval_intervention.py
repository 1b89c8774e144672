"""Intervention score: a planted model whose hidden unit u is clip property u, described by it; edits by rows of one
pass equal one edit per pass; the true description's effect correlation beats the shuffled and generic ones (chance
0)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from and_lightning.analysis.intervention import intervention_report, output_change, prefix_can_be_shared, unit_changes
from and_lightning.analysis.split import make_split
from and_lightning.models.base import TargetAdapter
from and_lightning.prune.masks import UnitMasks
from fakes import FakeBagOfWordsEncoder
from test_eval_simulation import toy_dissection


class PlantedAdapter(TargetAdapter):
    """A 4-sample "waveform" is the clip's 4 properties (+ noise); hidden unit u = ReLU(property u); a fixed head."""

    def __init__(self):
        super().__init__()
        self.net = nn.ModuleDict({"hidden": nn.Linear(4, 4), "head": nn.Linear(4, 3)})
        with torch.no_grad():
            self.net["hidden"].weight.copy_(torch.eye(4))
            self.net["hidden"].bias.zero_()
            self.net["head"].weight.copy_(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)) * 3)
            self.net["head"].bias.zero_()

    def forward(self, wave):
        return self.net["head"](torch.relu(self.net["hidden"](wave)))

    def layer_paths(self):
        return {"hidden": "net.hidden", "head": "net.head"}

    def unit_activations(self):
        return {"hidden": torch.relu}


def planted(n: int = 200):
    ids, captions, acts, records = toy_dissection(n=n)
    waves = torch.tensor(acts, dtype=torch.float32)
    hidden = np.maximum(acts, 0.0)
    records = [dict(r, layer="hidden", top_clips=[ids[i] for i in np.argsort(-hidden[:, r["unit"]])[:5]])
               for r in records]

    def load_waves(chosen):
        return waves[[ids.index(c) for c in chosen]], None

    return ids, captions, hidden, records, load_waves


@torch.no_grad()
def test_output_change_and_row_edits_hand_checked():
    base = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    edited = torch.tensor([[0.0, 0.0], [1.0, 0.0], [math.log(3.0), 0.0], [1.0, 0.0]])
    # block 0 equals base: 0; block 1, row 0: p0 = (1/2, 1/2), p = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2
    got = output_change(base, edited)
    assert got.shape == (2, 2) and got[0].abs().max() < 1e-12 and got[1, 1].abs() < 1e-12
    assert float(got[1, 0]) == pytest.approx(0.5 * math.log(2 / 3) + 0.5 * math.log(2))
    adapter = PlantedAdapter().eval()
    waves = torch.rand(5, 4, generator=torch.Generator().manual_seed(1))
    base = adapter(waves)
    together = unit_changes(adapter, "hidden", [0, 2, 3], waves, None, base, 0.0, units_per_pass=2)
    for i, u in enumerate([0, 2, 3]):  # one unit per pass, with the pruning stage's own masks
        with UnitMasks(adapter, {"hidden": [u]}):
            alone = output_change(base, adapter(waves))[0].numpy()
        np.testing.assert_allclose(together[i], alone, rtol=1e-6, atol=1e-9)
    assert together[0].max() > 0
    doubled = unit_changes(adapter, "hidden", [1], waves, None, base, 2.0, units_per_pass=4)
    scaled = adapter.net["head"](torch.relu(waves) * torch.tensor([1.0, 2.0, 1.0, 1.0]))
    np.testing.assert_allclose(doubled[0], output_change(base, scaled)[0].numpy(), rtol=1e-6, atol=1e-9)


def test_units_per_pass_keeps_the_audio_of_a_pass_within_budget():
    from and_lightning.analysis.intervention import units_per_pass

    assert units_per_pass(1024, 64, 1.0) == 16 and units_per_pass(1024, 64, 3.0) == 5  # 960 s of 3 s clips
    assert units_per_pass(10, 64, 10.0) == 1 and units_per_pass(128, 16, 1.0) == 8
    for bad in (0, -1, True, "a lot"):
        with pytest.raises(ValueError, match="evaluate.intervention.seconds_per_pass"):
            units_per_pass(bad, 64, 1.0)


def test_true_description_beats_shuffled_and_generic_is_chance():
    ids, captions, hidden, records, load_waves = planted()
    split = make_split(ids, 0.5, seed=0)
    kwargs = dict(max_clips=60, units_per_pass=3, shuffles=5, seed=0)
    rows, per_neuron, dists = intervention_report(records, {"hidden": hidden}, ids, captions, split,
                                                  FakeBagOfWordsEncoder(), PlantedAdapter(), load_waves, **kwargs)
    (row,) = rows
    assert row["ablate_rho"] > 0.3 and row["ablate_rho"] > row["ablate_rho_shuffled"] + 0.3
    assert row["amplify_rho"] > row["amplify_rho_shuffled"] + 0.3 and row["ablate_above_0"] == 1.0
    assert row["clips"] == 60 and row["scored"] == 4 and row["neurons"] == 4
    assert set(per_neuron) == {("hidden", u) for u in range(4)} and len(dists["hidden"][1]) == 20
    for generic in ("a sound", "xylophone"):  # every caption is judged alike: the description separates nothing
        recs = [dict(r, description=generic) for r in records]
        (g,), _, _ = intervention_report(recs, {"hidden": hidden}, ids, captions, split, FakeBagOfWordsEncoder(),
                                         PlantedAdapter(), load_waves, **kwargs)
        assert g["ablate_rho"] == 0.0 and g["amplify_rho"] == 0.0 and g["ablate_rho_shuffled"] == 0.0, generic
    with pytest.raises(ValueError, match="evaluate.intervention"):
        intervention_report(records, {"hidden": hidden}, ids, captions, split, FakeBagOfWordsEncoder(),
                            PlantedAdapter(), load_waves, amplify=1.0)


class ToyStore:
    """FAKE activation store of the planted dissection: clip ids, one layer, its activations, a manifest."""

    def __init__(self, ids, hidden):
        self.clip_ids, self.layers, self._acts = ids, ["hidden"], hidden
        self.manifest = {"preprocessing": {"sample_rate": 16000, "clip_seconds": 1.0, "pre_activation": False}}

    def acts(self, layer):
        return self._acts


def test_scorers_as_evaluate_tasks_share_one_split(tmp_path, monkeypatch):
    import json

    from and_lightning.analysis import intervention
    from and_lightning.stages.evaluate import evaluate_stage
    from conftest import compose_cfg

    ids, captions, hidden, records, load_waves = planted(n=120)
    cfg = compose_cfg("dissect", tmp_path, ["evaluate.tasks=[simulation,detection,intervention]",
                                            "evaluate.intervention.max_clips=40", "evaluate.detection.shuffles=2"])
    store = ToyStore(ids, hidden)
    waves = load_waves(ids)[0]

    class Clip:  # what ClipDataset returns for a planted clip (its 4 properties as the "waveform")
        def __init__(self, records, sr, seconds):
            self.ids = list(records)

        def __getitem__(self, i):
            return {"audio": waves[ids.index(self.ids[i])], "length": torch.tensor(4)}

    monkeypatch.setattr("and_lightning.data.clips.ClipDataset", Clip)
    res = evaluate_stage(cfg.evaluate, tmp_path / "ev", split_dir=tmp_path / "dissection", store=store,
                         records=records, captions=captions, clips={c: c for c in ids},
                         encoder=FakeBagOfWordsEncoder(), model=PlantedAdapter(), seed=0)
    assert intervention.Intervention.needs[-1] == "model"
    saved = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    split = saved["files"]["split"]
    assert split == res.files["simulation_split"] and len(list((tmp_path / "dissection").glob("split-*.json"))) == 1
    m = res.metrics
    assert m["eval/det/hidden/auprc"] > m["eval/det/hidden/auprc_shuffled"] + 0.1
    assert m["eval/int/hidden/ablate_rho"] > m["eval/int/hidden/ablate_rho_shuffled"] + 0.3
    assert {"det_auprc", "det_f1", "int_ablate_rho", "int_amplify_rho", "sim_pearson"} <= set(
        res.neuron_scores[("hidden", 0)])
    assert "| hidden |" in (tmp_path / "ev" / "detection.md").read_text()
    assert (tmp_path / "ev" / "intervention.csv").read_text().startswith("layer,ablate_rho,ablate_rho_shuffled")
    for name in ("detection_auprc", "intervention_ablate"):
        assert open(res.images[name], "rb").read(4) == b"\x89PNG"


def test_shared_prefix_equals_repeated_input_and_is_refused_when_batch_size_matters():
    from and_lightning.analysis.intervention import prefix_can_be_shared

    adapter = PlantedAdapter().eval()
    waves = torch.rand(6, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = adapter(waves)
    for factor in (0.0, 3.0):
        shared = unit_changes(adapter, "hidden", [0, 1, 3], waves, None, base, factor, 2, shared_prefix=True)
        plain = unit_changes(adapter, "hidden", [0, 1, 3], waves, None, base, factor, 2)
        np.testing.assert_allclose(shared, plain, rtol=1e-6, atol=1e-9)
    assert prefix_can_be_shared(adapter, "hidden", [0, 1], waves, None, base)

    class BatchMixing(PlantedAdapter):  # the head reads a batch statistic: rows of one pass are not independent
        def forward(self, wave):
            h = torch.relu(self.net["hidden"](wave))
            return self.net["head"](h - h.mean(0, keepdim=True) * (h.shape[0] != wave.shape[0]))

    mixing = BatchMixing().eval()
    with torch.no_grad():
        base = mixing(waves)
    assert not prefix_can_be_shared(mixing, "hidden", [0, 1], waves, None, base)


@torch.no_grad()
def test_frame_folding_model_crepe_output_units_edit_as_by_hand():
    """CREPE folds each clip's frames into the batch: a row's edit reaches all its frames. The clip output is the
    mean over frames of the classifier, so editing output unit u by f equals scaling the clip logit u by f."""
    from and_lightning.models.crepe import CrepeAdapter

    adapter = CrepeAdapter(capacity="tiny", hop_length=1600).eval()
    waves = torch.randn(3, 4800, generator=torch.Generator().manual_seed(0))
    base = adapter.run(waves)
    units = [5, 200, 300]
    for factor in (0.0, 3.0):
        got = unit_changes(adapter, "classifier", units, waves, None, base, factor, units_per_pass=2)
        for i, u in enumerate(units):
            edited = base.clone()
            edited[:, u] *= factor
            np.testing.assert_allclose(got[i], output_change(base, edited)[0].numpy(), rtol=1e-4, atol=1e-9)
    assert not prefix_can_be_shared(adapter, "classifier", units, waves, None, base)
