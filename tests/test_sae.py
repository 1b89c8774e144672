"""SAE features as units (issue 16): the splice computes exactly what the model did, erasing a feature removes
exactly its contribution, and `dissect layers=[conv2] sae=topk` trains an SAE, logs it and dissects its features."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from and_lightning.models.cnn import SmallCNN
from and_lightning.prune.masks import UnitMasks
from and_lightning.data.audio_io import save_audio
from and_lightning.data.clips import ClipRecord
from and_lightning.sae.fit import SAEModule, check_sae_layers, fvu, layer_positions
from and_lightning.sae.model import SparseAutoencoder, sae_settings
from and_lightning.sae.splice import SplicedAdapter


_TRAINED: dict[str, SparseAutoencoder] = {}


def train_sae(kind: str, tokens: torch.Tensor, d_sae: int = 32, k: int = 4, steps: int = 100) -> SparseAutoencoder:
    """A small SAE fitted on `tokens` with the training step of SAEModule (sae-lens' loss), once per kind."""
    if kind in _TRAINED:
        return _TRAINED[kind]
    torch.manual_seed(0)
    sae = SparseAutoencoder(kind, tokens.shape[1], d_sae, k)
    module = SAEModule(sae, lr=3e-3, dead_after=2000)
    module.log_dict = lambda *a, **kw: None  # no trainer attached
    opt = module.configure_optimizers()
    for step in range(steps):
        loss = module.training_step([tokens[torch.randint(len(tokens), (256,))]], step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _TRAINED[kind] = sae.eval()
    return _TRAINED[kind]


@pytest.fixture(scope="module")
def cnn_and_positions():
    """A random SmallCNN (eval mode), 6 clips of noise + tones, and conv2's outputs at every position."""
    torch.manual_seed(0)
    cnn = SmallCNN(num_classes=3, channels=(4, 8)).eval()
    t = torch.arange(16000) / 16000
    wave = torch.cat([0.3 * torch.randn(3, 16000), torch.stack([torch.sin(2 * torch.pi * f * t) for f in
                                                                 (220, 880, 3000)])])
    rows = []
    h = cnn.layer_module("conv2").register_forward_hook(lambda m, a, out: rows.append(out.movedim(1, -1)))
    with torch.no_grad():
        cnn(wave)
    h.remove()
    return cnn, wave, rows[0].reshape(-1, 8)


def capture(spliced: SplicedAdapter, wave: torch.Tensor, erase: list[int]) -> dict[str, torch.Tensor]:
    """One pass with features `erase` of conv2.sae erased: the feature vectors [B, freq, time, features] as
    collection records them, conv2's output as the next block reads it (before its ReLU), and the logits."""
    seen: dict[str, torch.Tensor] = {}
    masks = UnitMasks(spliced, {"conv2.sae": erase}).apply()  # registered first: the captures see the erasure
    handles = [spliced.layer_module(name).register_forward_hook(
        lambda m, a, out, name=name: seen.__setitem__(name, out)) for name in ("conv2.sae", "conv2")]
    try:
        with torch.no_grad():
            seen["logits"] = spliced(wave)
    finally:
        masks.remove()
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
def test_unpruned_splice_is_identity_and_erasing_one_feature_zeroes_only_it(cnn_and_positions, kind):
    cnn, wave, tokens = cnn_and_positions
    cnn = copy.deepcopy(cnn)  # the splice hooks the model in place: keep the fixture's model unspliced
    sae = train_sae(kind, tokens)
    with torch.no_grad():
        assert fvu(tokens, sae.reconstruct(tokens)) < 0.5  # the SAE learned something: the splice is not trivial
        before = cnn(wave)
    spliced = SplicedAdapter(cnn, {"conv2": sae})
    assert spliced.layers()["conv2.sae"] == 32 and list(spliced.layer_paths())[:3] == ["conv1", "conv2", "conv2.sae"]
    clean = capture(spliced, wave, [])
    torch.testing.assert_close(clean["logits"], before, atol=1e-5, rtol=0)  # unpruned splice: the model itself

    feature = int((clean["conv2.sae"] > 0).flatten(0, -2).sum(0).argmax())  # the feature that fires most often
    erased = capture(spliced, wave, [feature])
    assert clean["conv2.sae"][..., feature].abs().max() > 0
    assert torch.equal(erased["conv2.sae"][..., feature], torch.zeros_like(erased["conv2.sae"][..., feature]))
    others = [i for i in range(32) if i != feature]
    assert torch.equal(erased["conv2.sae"][..., others], clean["conv2.sae"][..., others])  # nothing else moved
    # conv2's output lost exactly code_f x decoder direction f at every position (the error term is unchanged)
    with torch.no_grad():
        direction = sae.decode_delta(torch.eye(32))[feature]
    removed = (clean["conv2"] - erased["conv2"]).movedim(1, -1)
    torch.testing.assert_close(removed, clean["conv2.sae"][..., feature, None] * direction, atol=1e-5, rtol=1e-4)
    assert (erased["logits"] - before).abs().max() > 1e-4  # and the model's output changed


def test_features_have_their_host_layers_time_axis(cnn_and_positions):
    """With exemplars=window an SAE feature gets windows like a neuron: its codes over (freq, time) averaged over
    frequency, at the host layer's seconds per frame."""
    cnn, wave, tokens = cnn_and_positions
    spliced = SplicedAdapter(copy.deepcopy(cnn), {"conv2": train_sae("topk", tokens)})
    seen = capture(spliced, wave, [])
    curve, seconds = spliced.time_curve("conv2.sae", seen["conv2.sae"], len(wave), 1.0)
    host, host_seconds = spliced.time_curve("conv2", seen["conv2"], len(wave), 1.0)
    assert seconds == host_seconds and curve.shape == (len(wave), 32, host.shape[2])
    torch.testing.assert_close(curve, seen["conv2.sae"].mean(dim=1).movedim(-1, 1))  # [B, freq, time, f] -> [B, f, time]
    assert spliced.time_curve("head", torch.zeros(len(wave), 3), len(wave), 1.0) is None


def test_batchtopk_codes_do_not_depend_on_the_batch(cnn_and_positions):
    sae = train_sae("batchtopk", cnn_and_positions[2])
    with torch.no_grad():
        codes = sae.encode(cnn_and_positions[2])
        torch.testing.assert_close(sae.encode(cnn_and_positions[2][:5]), codes[:5])
        assert 0 < (codes > 0).sum(-1).float().mean() < 32


def test_training_positions_are_a_seeded_uniform_subset_kept_while_streaming(cnn_and_positions, tmp_path):
    cnn, wave, _ = cnn_and_positions
    records = []
    for i, w in enumerate(wave):
        save_audio(tmp_path / f"{i}.wav", w, 16000)
        records.append(ClipRecord(str(i), str(tmp_path / f"{i}.wav"), 0, 0))
    every = layer_positions(cnn, records, 16000, 1.0, "conv2", 1, 10 ** 6, seed=0)
    per_clip = len(every) // len(records)
    assert every.shape == (len(records) * per_clip, 8)

    # a subset smaller than one clip's positions, streamed one clip per batch: rows of the full set, in clip
    # order, from every clip (not only the first ones), the same for the same seed, other rows for another
    kept = layer_positions(cnn, records, 16000, 1.0, "conv2", 1, per_clip // 2, seed=0)
    rows = [int(torch.nonzero((every == r).all(dim=1))[0]) for r in kept]
    assert len(kept) == per_clip // 2 and rows == sorted(rows)
    assert {r // per_clip for r in rows} == set(range(len(records)))
    assert torch.allclose(kept, layer_positions(cnn, records, 16000, 1.0, "conv2", 3, per_clip // 2, seed=0),
                          atol=1e-5)  # batch size changes the conv sums in the last bits only
    assert not torch.equal(kept, layer_positions(cnn, records, 16000, 1.0, "conv2", 1, per_clip // 2, seed=1))


def test_bad_sae_settings_name_the_field():
    with pytest.raises(ValueError, match=r"^layers=all: with `sae` set"):
        check_sae_layers("all")
    with pytest.raises(ValueError, match=r"layers=\['conv\*'\]"):
        check_sae_layers(["conv*"])
    assert check_sae_layers(["conv4"]) == ["conv4"]
    with pytest.raises(ValueError, match=r"^sae.kind='relu'"):
        sae_settings({"kind": "relu", "expansion": 4, "k": 8}, 16)
    with pytest.raises(ValueError, match=r"^sae.k=100: expected an integer between 1 and the number of features \(64\)"):
        sae_settings({"kind": "topk", "expansion": 4, "k": 100}, 16)
    assert sae_settings({"kind": "batchtopk", "expansion": 4, "k": 8}, 16)["d_sae"] == 64


@pytest.mark.slow  # ~60 s: trains the session's tiny CNN, an SAE, and describes 24 units
def test_dissect_with_sae_describes_features_like_neurons(trained_cnn):
    """`dissect layers=[conv2] sae=topk`: the SAE is trained and logged (W&B), and `conv2.sae` gets every output
    the neurons of conv2 get: one description record per feature, and rows in the evaluation tables."""
    from and_lightning.dissection import dissect
    from conftest import compose_cfg
    from wandb_offline import read_run

    _, root, overrides = trained_cnn
    cfg = compose_cfg("dissect", root, overrides + [
        "layers=[conv2]", "sae=topk", "sae.expansion=2", "sae.k=4", "sae.epochs=6", "sae.max_tokens=3000",
        "sae.batch_size=128", "sae.lr=0.003", "evaluate.tasks=[ground_truth,polysemanticity]"])
    result = dissect(cfg)
    assert result["layers"] == ["conv2", "conv2.sae"]
    rows = [json.loads(line) for line in Path(result["descriptions"]).read_text().splitlines()]
    by_layer = {layer: [r for r in rows if r["layer"] == layer] for layer in result["layers"]}
    assert [r["unit"] for r in by_layer["conv2.sae"]] == list(range(16))  # 2 x 8 units
    assert set(by_layer["conv2.sae"][0]) == set(by_layer["conv2"][0])  # the same record as a neuron's
    assert all(r["description"] for r in by_layer["conv2.sae"] if r["top_values"][0] > 0)
    m = result["metrics"]
    assert m["sae/features/conv2"] == 16 and m["sae/l0/conv2"] == pytest.approx(4.0)
    assert 0 <= m["sae/fvu/conv2"] < 1 and 0 <= m["sae/dead_fraction/conv2"] < 1
    for table in ("ground_truth", "polysemanticity"):
        text = Path(result["evaluate"]["files"][f"{table}_csv"]).read_text()
        assert "\nconv2," in text and "\nconv2.sae," in text
    # the SAE's own W&B run: loss, FVU, L0 and dead features
    runs = [read_run(d) for d in Path(cfg.paths.output_dir, "wandb").glob("offline-run-*")]
    sae_run = next(r for r in runs if r["summary"].get("sae/fvu") is not None)
    assert sae_run["summary"]["sae/l0"] == pytest.approx(4.0)
    assert {"sae/train_mse", "sae/train_fvu", "sae/dead_fraction"} <= set(sae_run["summary"])
    # a rerun reuses the SAE (cached by store, layer and settings) and finds the same feature values
    again = dissect(compose_cfg("dissect", root, overrides + [
        "layers=[conv2]", "sae=topk", "sae.expansion=2", "sae.k=4", "sae.epochs=6", "sae.max_tokens=3000",
        "sae.batch_size=128", "sae.lr=0.003", "evaluate.tasks=[]", "stage=collect"]))
    assert again["store"] == result["store"]


def test_polysemanticity_counts_classes_among_top_clips_and_skips_constant_units():
    from and_lightning.analysis.polysemanticity import polysemanticity

    labels = {f"c{i}": i % 4 for i in range(40)}  # 4 classes, 10 clips each
    records = [{"layer": "l", "unit": 0, "top_clips": ["c0", "c4", "c8"], "top_values": [3, 2, 1], "bottom_values": [0]},
               {"layer": "l", "unit": 1, "top_clips": ["c0", "c1", "c2"], "top_values": [3, 2, 1], "bottom_values": [0]},
               {"layer": "l", "unit": 2, "top_clips": ["c0", "c1", "c2"], "top_values": [0, 0, 0], "bottom_values": [0]}]
    (row,) = polysemanticity(records, labels, draws=500)
    assert (row["units"], row["constant"], row["distinct_classes"], row["single_class"]) == (3, 1 / 3, 2.0, 0.5)
    assert 2.3 < row["distinct_classes_random"] < 2.6  # 3 random clips of 4 balanced classes: about 2.45
