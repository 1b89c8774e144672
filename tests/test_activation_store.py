"""Activation store: the clip ranking (value, tie-break statistic, row), exact streaming top-K with tie counts,
streaming moments, shards -> assembled store, reader, failure modes."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from and_lightning.store.activations import (
    ACTS, MANIFEST, SHARDS, TIEBREAK, TOPK, ActivationStore, RunningMoments, RunningTopK, assemble_store,
    finished_rows, iter_row_chunks, layer_dir, partial_dir, top_clip_index, write_npz_stable, write_shard,
)


def reference_topk(mat: np.ndarray, tie: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Reference by lexsort: per column the rows of the k largest / smallest values (equal values: larger / smaller
    tie-break statistic first, then the lower row), and the left-out rows tying the k-th kept value (ties) and its
    tie-break statistic too (unresolved)."""
    n, m = mat.shape
    out = {}
    for side, sign in (("top", 1), ("bottom", -1)):
        rows = np.stack([np.lexsort((np.arange(n), -sign * tie[:, j], -sign * mat[:, j]))[:k] for j in range(m)])
        left_out = np.ones((m, n), bool)
        np.put_along_axis(left_out, rows, False, 1)
        same = (mat.T == np.take_along_axis(mat.T, rows[:, -1:], 1)) & left_out
        out[f"{side}_rows"] = rows
        out[f"{side}_ties"] = same.sum(1)
        out[f"{side}_unresolved"] = (same & (tie.T == np.take_along_axis(tie.T, rows[:, -1:], 1))).sum(1)
    return out


def tied_matrix(n: int, m: int, seed: int) -> np.ndarray:
    """float32 values with many ties, signed zeros, extremes and subnormals."""
    rng = np.random.default_rng(seed)
    pool = np.array([-3e38, -2.5, -1.0, -0.0, 0.0, 1e-45, 1e-3, 1.0, 2.5, 3e38], np.float32)
    mat = pool[rng.integers(0, len(pool), size=(n, m))]
    mask = rng.random((n, m)) < 0.3
    mat[mask] = rng.standard_normal(int(mask.sum())).astype(np.float32)
    return mat


def assert_topk(got, mat: np.ndarray, tie: np.ndarray, k: int) -> None:
    want = reference_topk(mat, tie, k)
    for key, value in want.items():
        assert np.array_equal(got[key] if isinstance(got, dict) else getattr(got, key), value), key
    for side in ("top", "bottom"):
        rows = want[f"{side}_rows"]
        values = got[f"{side}_values"] if isinstance(got, dict) else getattr(got, f"{side}_values")
        assert np.array_equal(values.view(np.uint32), np.take_along_axis(mat.T, rows, 1).view(np.uint32))


def test_clip_ranking_by_value_then_tiebreak_then_row():
    values = torch.tensor([[2.0], [5.0], [2.0], [2.0], [2.0]])
    tiebreak = torch.tensor([[0.1], [0.0], [0.7], [0.1], [-1.0]])
    assert top_clip_index(values, 5)[:, 0].tolist() == [1, 0, 2, 3, 4]  # no statistic: the lower row
    assert top_clip_index(values, 4, tiebreak)[:, 0].tolist() == [1, 2, 0, 3]
    assert top_clip_index(-values, 3, -tiebreak)[:, 0].tolist() == [4, 0, 3]  # bottom: lowest statistic first
    assert top_clip_index(values, 2, tiebreak, faithful=True).tolist() == torch.topk(values, 2, dim=0).indices.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_topk_equals_the_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, m, k = 57, 9, 5
    mat = tied_matrix(n, m, seed)
    mat[:, 0] = rng.standard_normal(n).astype(np.float32)  # one column without ties
    tie = tied_matrix(n, m, seed + 10) if seed else rng.integers(-2, 3, (n, m)).astype(np.float32)
    acc = RunningTopK(k)
    for rows in np.split(np.arange(n), sorted(rng.choice(np.arange(1, n), 6, replace=False))):
        acc.update(mat[rows], tie[rows])
    res = acc.result()
    assert_topk(res, mat, tie, k)
    assert res["top_ties"].sum() > 0 and res["bottom_unresolved"].sum() > 0  # the cases are exercised


def test_topk_k_larger_than_rows_and_empty():
    acc = RunningTopK(10)
    with pytest.raises(ValueError, match="zero rows"):
        acc.result()
    acc.update(np.array([[1.0], [3.0], [2.0]], np.float32), np.zeros((3, 1), np.float32))
    assert acc.result()["top_rows"].tolist() == [[1, 2, 0]]
    assert acc.result()["bottom_values"].tolist() == [[1.0, 2.0, 3.0]]
    assert acc.result()["top_ties"].tolist() == [0]
    with pytest.raises(ValueError, match="k >= 1"):
        RunningTopK(0)


def test_running_moments_match_numpy_and_hand_values():
    mom = RunningMoments(1)
    for chunk in ([[1.0], [2.0]], [[3.0]], [[4.0], [5.0], [6.0]]):
        mom.update(np.array(chunk, np.float32))
    assert mom.mean[0] == pytest.approx(3.5)
    assert mom.std()[0] == pytest.approx(np.sqrt(17.5 / 6))  # population std of 1..6
    rng = np.random.default_rng(0)
    mat = (rng.standard_normal((101, 7)) * 3 + 10).astype(np.float32)
    mom = RunningMoments(7)
    for chunk in np.array_split(mat, 9):
        mom.update(chunk)
    np.testing.assert_allclose(mom.mean, mat.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(mom.std(), mat.astype(np.float64).std(0), rtol=1e-10)


def test_stable_npz_has_fixed_timestamps_and_loads(tmp_path):
    arrays = {"a": np.arange(5), "ids": np.array(["x", "yy"])}
    write_npz_stable(tmp_path / "one.npz", arrays)
    write_npz_stable(tmp_path / "two.npz", arrays)
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "one.npz") as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    with np.load(tmp_path / "one.npz") as z:
        assert z["ids"].tolist() == ["x", "yy"] and z["a"].tolist() == [0, 1, 2, 3, 4]
    assert not list(tmp_path.glob(".*.tmp"))


def make_shards(store, mats, row_groups, ties=None):
    """Write one shard per row group (as the writer would) -> shard folder. `mats`, `ties`: layer -> [N, units]
    activations and tie-break statistics (default: zeros)."""
    shard_dir = partial_dir(store) / SHARDS
    shard_dir.mkdir(parents=True, exist_ok=True)
    layers = {layer: mat.shape[1] for layer, mat in mats.items()}
    full = np.concatenate(list(mats.values()), axis=1)
    tie = np.zeros_like(full) if ties is None else np.concatenate([ties[layer] for layer in mats], axis=1)
    for rows in row_groups:
        rows = np.ascontiguousarray(rows, np.int64)
        write_shard(shard_dir, layers, rows, full[rows], tie[rows])
    return shard_dir


def manifest_for(clip_ids, mats, k):
    return {"format": 2, "clip_ids": clip_ids, "top_k": k, "tie_break": {name: "test statistic" for name in mats},
            "layers": [{"name": name, "units": mat.shape[1]} for name, mat in mats.items()]}


def build_store(path, mats, k, ties=None, row_groups=None):
    n = len(next(iter(mats.values())))
    make_shards(path, mats, row_groups or [np.arange(n)], ties)
    assemble_store(path, manifest_for([f"clip{i:02d}" for i in range(n)], mats, k))
    return ActivationStore.open(path)


def test_assemble_from_interleaved_shards_then_read(tmp_path):
    rng = np.random.default_rng(0)
    n = 23
    clip_ids = [f"clip{i:02d}" for i in range(n)]
    mats = {"a.fc1": tied_matrix(n, 4, 5), "b": rng.standard_normal((n, 3)).astype(np.float32)}
    ties = {"a.fc1": tied_matrix(n, 4, 6), "b": rng.standard_normal((n, 3)).astype(np.float32)}
    store = tmp_path / "root" / "key"
    rows = np.arange(n)
    shard_dir = make_shards(store, mats, [rows[0::2][:5], rows[1::2], rows[0::2][5:]], ties)  # like 2 ranks
    assert finished_rows(shard_dir, n).all()
    assemble_store(store, manifest_for(clip_ids, mats, 3))
    assert not partial_dir(store).exists()
    reader = ActivationStore.open(store)
    assert reader.clip_ids == clip_ids and reader.layers == {"a.fc1": 4, "b": 3} and reader.top_k == 3
    assert reader.tie_break == {"a.fc1": "test statistic", "b": "test statistic"}
    for layer, mat in mats.items():
        acts = reader.acts(layer)
        assert acts.dtype == np.float32 and not acts.flags.writeable
        assert np.array_equal(acts.view(np.uint32), mat.view(np.uint32))  # bit for bit
        assert np.array_equal(reader.tiebreak(layer), ties[layer])
        tk = reader.topk(layer)
        assert_topk(tk, mat, ties[layer], 3)
        assert tk.top_ids.tolist() == np.asarray(clip_ids)[tk.top_rows].tolist()
        assert np.array_equal(tk.top_tiebreak, np.take_along_axis(ties[layer].T, tk.top_rows, 1))
        np.testing.assert_allclose(tk.mean, mat.astype(np.float64).mean(0), rtol=1e-6)
        np.testing.assert_allclose(tk.std, mat.astype(np.float64).std(0), rtol=1e-6)
    assert reader.row_of("clip07") == 7
    with pytest.raises(KeyError, match="stored: a.fc1, b"):
        reader.acts("nope")


def test_float32_separates_values_float16_would_tie(tmp_path):
    """2000.0 .. 2000.3 are all 2000 in float16 (spacing 1 there): the top-2 must be the two largest, not the
    first two clips."""
    mat = np.array([[2000.0], [2000.1], [1999.8], [2000.3], [2000.2]], np.float32)
    assert len(set(mat.astype(np.float16).ravel().tolist())) == 1
    tk = build_store(tmp_path / "key", {"l": mat}, 2).topk("l")
    assert tk.top_rows.tolist() == [[3, 4]] and tk.top_values.tolist() == [[np.float32(2000.3), np.float32(2000.2)]]
    assert tk.bottom_rows.tolist() == [[2, 0]] and tk.top_ties.tolist() == [0]


def test_ties_are_broken_by_the_tiebreak_statistic_and_counted(tmp_path):
    """A ReLU unit is exactly 0 on clips 0-4: its bottom-2 are the clips whose pre-activation peak is lowest (the
    tie-break statistic), not the first clips; the store records 3 left-out ties, 1 of them only by clip order."""
    acts = np.array([[0.0], [0.0], [0.0], [0.0], [0.0], [0.7], [0.2]], np.float32)
    peak = np.array([[-0.1], [-0.5], [-0.2], [-0.9], [-0.2], [0.9], [0.4]], np.float32)
    tk = build_store(tmp_path / "key", {"relu": acts}, 3, ties={"relu": peak}).topk("relu")
    assert tk.bottom_rows.tolist() == [[3, 1, 2]]  # peaks -0.9, -0.5, then -0.2 (clip 2 before clip 4)
    assert tk.bottom_tiebreak.tolist() == [[np.float32(-0.9), np.float32(-0.5), np.float32(-0.2)]]
    assert tk.bottom_ties.tolist() == [2] and tk.bottom_unresolved.tolist() == [1]  # clips 0 and 4; 4 ties -0.2
    assert tk.top_rows.tolist() == [[5, 6, 0]] and tk.top_ties.tolist() == [4]  # the 3rd: the highest-peak zero
    assert tk.top_unresolved.tolist() == [0]


def test_topk_with_another_k_is_computed_from_the_matrices(tmp_path):
    n = 30
    mats, ties = {"l": tied_matrix(n, 5, 9)}, {"l": tied_matrix(n, 5, 19)}
    reader = build_store(tmp_path / "key", mats, 2, ties, [np.arange(0, 17), np.arange(17, n)])
    assert_topk(reader.topk("l", k=7), mats["l"], ties["l"], 7)
    assert (layer_dir(tmp_path / "key", "l") / "topk-k7.npz").is_file()
    assert reader.topk("l").top_rows.shape == (5, 2)  # the store's own K is unchanged


def test_missing_rows_and_overlapping_shards_are_refused(tmp_path):
    n = 10
    mats = {"l": np.arange(n * 2, dtype=np.float32).reshape(n, 2)}
    store = tmp_path / "key"
    make_shards(store, mats, [np.arange(0, 6)])
    with pytest.raises(ValueError, match="4 of 10 rows have no shard"):
        assemble_store(store, manifest_for([str(i) for i in range(n)], mats, 2))
    assert not store.exists()
    make_shards(store, mats, [np.arange(4, 10)])
    with pytest.raises(ValueError, match="overlaps other shards"):
        assemble_store(store, manifest_for([str(i) for i in range(n)], mats, 2))
    assert not store.exists()


def test_duplicate_shard_is_skipped_and_a_crashed_assembly_is_redone(tmp_path):
    n = 8
    mats = {"l": np.arange(n * 3, dtype=np.float32).reshape(n, 3)}
    store = tmp_path / "key"
    make_shards(store, mats, [np.arange(0, 4), np.arange(4, 8), np.arange(4, 8)[::-1]])
    (partial_dir(store) / "assemble-stale").mkdir()  # left by a process killed while assembling
    assemble_store(store, manifest_for([str(i) for i in range(n)], mats, 2))
    assert np.array_equal(ActivationStore.open(store).acts("l"), mats["l"])
    assert sorted(p.name for p in store.iterdir()) == sorted([MANIFEST, "layer=l"])
    assert sorted(p.name for p in layer_dir(store, "l").iterdir()) == sorted([ACTS, TIEBREAK, TOPK])


def test_iter_row_chunks_reads_rows_in_order(tmp_path):
    mat = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "m.npy", mat)
    got = [(start, chunk.copy()) for start, chunk in iter_row_chunks(tmp_path / "m.npy", chunk_bytes=3 * 4 * 4)]
    assert [s for s, _ in got] == [0, 3, 6, 9]
    assert np.array_equal(np.concatenate([c for _, c in got]), mat)
    np.save(tmp_path / "bad.npy", mat.astype(np.float16))
    with pytest.raises(ValueError, match="float32"):
        list(iter_row_chunks(tmp_path / "bad.npy"))


def test_open_refuses_incomplete_store(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete activation store"):
        ActivationStore.open(tmp_path / "half")


def test_open_refuses_a_format_1_store_in_one_line(tmp_path):
    """A float16 store of the previous format (ties by clip order) is never read as if it were current."""
    build_store(tmp_path / "key", {"l": np.ones((3, 2), np.float32)}, 2)
    manifest = json.loads((tmp_path / "key" / MANIFEST).read_text())
    (tmp_path / "key" / MANIFEST).write_text(json.dumps({**manifest, "format": 1}))
    with pytest.raises(ValueError) as err:
        ActivationStore.open(tmp_path / "key")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"{tmp_path / 'key' / MANIFEST}: activation store format 1, this code reads "
                                     "format 2")
