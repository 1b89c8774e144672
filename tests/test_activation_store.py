"""Activation store: exact streaming top-K, streaming moments, shards -> assembled store, reader, failure modes."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from and_lightning.store.activations import (
    ACTS, MANIFEST, SHARDS, TOPK, ActivationStore, RunningMoments, RunningTopK, assemble_store, best_keys,
    decode_codes, finished_rows, iter_row_chunks, keys_of, layer_dir, ordered_codes, partial_dir, write_npz_stable,
    write_shard,
)


def numpy_topk(mat: np.ndarray, k: int):
    """Reference: per column, rows of the k largest / smallest values, ties to the lower row (stable sort)."""
    top = np.argsort(-mat, axis=0, kind="stable")[:k].T
    bottom = np.argsort(mat, axis=0, kind="stable")[:k].T
    return top, bottom


def tied_matrix(n: int, m: int, seed: int, infinite: bool = True) -> np.ndarray:
    """float16 values with many ties, signed zeros, extremes and subnormals (and +-inf if `infinite`)."""
    rng = np.random.default_rng(seed)
    pool = [-65504, -2.5, -1.0, -0.0, 0.0, 6e-8, 1e-3, 1.0, 2.5, 65504] + ([-np.inf, np.inf] if infinite else [])
    pool = np.array(pool, np.float16)
    mat = pool[rng.integers(0, len(pool), size=(n, m))]
    mask = rng.random((n, m)) < 0.3
    mat[mask] = rng.standard_normal(int(mask.sum())).astype(np.float16)
    return mat


def feed(acc: RunningTopK, mat: np.ndarray, rows: np.ndarray, splits: list[int]) -> None:
    for chunk in np.split(np.arange(len(rows)), splits):
        if len(chunk):
            acc.update(mat[rows[chunk]], rows[chunk])


def test_codes_preserve_float16_order_and_round_trip():
    bits = np.arange(1 << 16, dtype=np.uint16)
    values = bits.view(np.float16)
    values = values[~np.isnan(values) & ~((values == 0) & np.signbit(values))]  # no NaN, no -0 (maps to +0)
    codes = ordered_codes(values)
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(codes[order]) > 0)  # strictly increasing along increasing values
    back = decode_codes(codes)
    assert np.array_equal(back.view(np.uint16), values.view(np.uint16))
    assert ordered_codes(np.array([-0.0], np.float16))[0] == ordered_codes(np.array([0.0], np.float16))[0] == 0x8000


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_topk_equals_numpy_argsort_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, m, k = 57, 9, 5
    mat = tied_matrix(n, m, seed)
    mat[:, 0] = rng.standard_normal(n).astype(np.float16)  # one column without ties
    acc = RunningTopK(k)
    feed(acc, mat, np.arange(n, dtype=np.int64), sorted(rng.choice(np.arange(1, n), 6, replace=False)))
    res = acc.result()
    top, bottom = numpy_topk(mat, k)
    assert np.array_equal(res["top_rows"], top)
    assert np.array_equal(res["bottom_rows"], bottom)
    assert np.array_equal(res["top_values"], np.take_along_axis(mat.T, top, 1).astype(np.float32))
    assert np.array_equal(res["bottom_values"], np.take_along_axis(mat.T, bottom, 1).astype(np.float32))


def test_topk_is_independent_of_row_order_and_sharding():
    """Rows arriving shuffled, split over two accumulators (ranks) and merged, give the same exact answer."""
    rng = np.random.default_rng(3)
    n, m, k = 40, 6, 4
    mat = tied_matrix(n, m, 3)
    perm = rng.permutation(n).astype(np.int64)
    a, b = RunningTopK(k), RunningTopK(k)
    feed(a, mat, perm[::2], [3, 7])
    feed(b, mat, perm[1::2], [5])
    a.merge(b.top_keys, b.bottom_keys)
    top, bottom = numpy_topk(mat, k)
    assert np.array_equal(a.result()["top_rows"], top)
    assert np.array_equal(a.result()["bottom_rows"], bottom)


def test_best_keys_counts_repeated_keys_once():
    cand = np.array([[5, 9, 9, 1, 7], [3, 3, 3, 2, 8]], np.int64)
    assert best_keys(cand, 3).tolist() == [[9, 7, 5], [8, 3, 2]]
    assert best_keys(cand[:, :3], 3).tolist() == [[9], [3]]  # only as many as every row has distinct keys
    top, bottom = keys_of(np.array([[1.0], [1.0]], np.float16), np.array([4, 2]))
    assert top[0, 1] > top[0, 0] and bottom[0, 1] > bottom[0, 0]  # equal values: the lower row ranks first


def test_cumulative_states_overlapping_are_merged_exactly():
    """A rank's shards carry its running state so far; their union (with repeats) gives the exact answer."""
    n, k = 30, 4
    mat = tied_matrix(n, 5, 11)
    states, acc = [], RunningTopK(k)
    for rows in np.array_split(np.arange(n), 5):
        acc.update(mat[rows], rows)
        states.append((acc.top_keys.copy(), acc.bottom_keys.copy()))
    merged = RunningTopK(k)
    for top, bottom in states:
        merged.merge(top, bottom)
    top, bottom = numpy_topk(mat, k)
    assert np.array_equal(merged.result()["top_rows"], top)
    assert np.array_equal(merged.result()["bottom_rows"], bottom)


def test_topk_k_larger_than_rows_and_empty():
    acc = RunningTopK(10)
    with pytest.raises(ValueError, match="zero rows"):
        acc.result()
    mat = np.array([[1.0], [3.0], [2.0]], np.float16)
    acc.update(mat, np.arange(3))
    assert acc.result()["top_rows"].tolist() == [[1, 2, 0]]
    assert acc.result()["bottom_values"].tolist() == [[1.0, 2.0, 3.0]]
    with pytest.raises(ValueError, match="k >= 1"):
        RunningTopK(0)


def test_running_moments_match_numpy_and_hand_values():
    mom = RunningMoments(1)
    for chunk in ([[1.0], [2.0]], [[3.0]], [[4.0], [5.0], [6.0]]):
        mom.update(np.array(chunk, np.float16))
    assert mom.mean[0] == pytest.approx(3.5)
    assert mom.std()[0] == pytest.approx(np.sqrt(17.5 / 6))  # population std of 1..6
    rng = np.random.default_rng(0)
    mat = (rng.standard_normal((101, 7)) * 3 + 10).astype(np.float16)
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


def make_shards(store, mat_by_layer, k, row_groups):
    """Write one shard per row group (as the writer would, its top-K state covering the group) -> shard folder."""
    shard_dir = partial_dir(store) / SHARDS
    shard_dir.mkdir(parents=True, exist_ok=True)
    layers = {layer: mat.shape[1] for layer, mat in mat_by_layer.items()}
    full = np.concatenate(list(mat_by_layer.values()), axis=1)
    for rows in row_groups:
        rows = np.ascontiguousarray(rows, np.int64)
        acc = RunningTopK(k)
        acc.update(full[rows], rows)
        write_shard(shard_dir, layers, rows, full[rows], acc.top_keys, acc.bottom_keys)
    return shard_dir


def manifest_for(clip_ids, mats, k):
    return {"format": 1, "clip_ids": clip_ids, "top_k": k,
            "layers": [{"name": name, "units": mat.shape[1]} for name, mat in mats.items()]}


def test_assemble_from_interleaved_shards_then_read(tmp_path):
    rng = np.random.default_rng(0)
    n = 23
    clip_ids = [f"clip{i:02d}" for i in range(n)]
    mats = {"a.fc1": tied_matrix(n, 4, 5, infinite=False), "b": rng.standard_normal((n, 3)).astype(np.float16)}
    store = tmp_path / "root" / "key"
    rows = np.arange(n)
    shard_dir = make_shards(store, mats, 3, [rows[0::2][:5], rows[1::2], rows[0::2][5:]])  # like 2 ranks
    assert finished_rows(shard_dir, n).all()
    assemble_store(store, manifest_for(clip_ids, mats, 3))
    assert not partial_dir(store).exists()
    reader = ActivationStore.open(store)
    assert reader.clip_ids == clip_ids and reader.layers == {"a.fc1": 4, "b": 3} and reader.top_k == 3
    for layer, mat in mats.items():
        acts = reader.acts(layer)
        assert acts.dtype == np.float16 and not acts.flags.writeable
        assert np.array_equal(acts.view(np.uint16), mat.view(np.uint16))  # bit for bit
        tk = reader.topk(layer)
        top, bottom = numpy_topk(mat, 3)
        assert np.array_equal(tk.top_rows, top) and np.array_equal(tk.bottom_rows, bottom)
        assert tk.top_ids.tolist() == np.asarray(clip_ids)[top].tolist()
        np.testing.assert_allclose(tk.mean, mat.astype(np.float64).mean(0), rtol=1e-6)
        np.testing.assert_allclose(tk.std, mat.astype(np.float64).std(0), rtol=1e-6)
    assert reader.row_of("clip07") == 7
    with pytest.raises(KeyError, match="stored: a.fc1, b"):
        reader.acts("nope")


def test_topk_with_another_k_is_computed_from_the_matrix(tmp_path):
    n = 30
    mats = {"l": tied_matrix(n, 5, 9, infinite=False)}
    store = tmp_path / "key"
    make_shards(store, mats, 2, [np.arange(0, 17), np.arange(17, n)])
    assemble_store(store, manifest_for([str(i) for i in range(n)], mats, 2))
    reader = ActivationStore.open(store)
    tk = reader.topk("l", k=7)
    top, bottom = numpy_topk(mats["l"], 7)
    assert np.array_equal(tk.top_rows, top) and np.array_equal(tk.bottom_rows, bottom)
    assert (layer_dir(store, "l") / "topk-k7.npz").is_file()
    assert reader.topk("l").top_rows.shape == (5, 2)  # the store's own K is unchanged


def test_missing_rows_and_overlapping_shards_are_refused(tmp_path):
    n = 10
    mats = {"l": np.arange(n * 2, dtype=np.float16).reshape(n, 2)}
    store = tmp_path / "key"
    make_shards(store, mats, 2, [np.arange(0, 6)])
    with pytest.raises(ValueError, match="4 of 10 rows have no shard"):
        assemble_store(store, manifest_for([str(i) for i in range(n)], mats, 2))
    assert not store.exists()
    make_shards(store, mats, 2, [np.arange(4, 10)])
    with pytest.raises(ValueError, match="overlaps other shards"):
        assemble_store(store, manifest_for([str(i) for i in range(n)], mats, 2))
    assert not store.exists()


def test_duplicate_shard_is_skipped_and_a_crashed_assembly_is_redone(tmp_path):
    n = 8
    mats = {"l": np.arange(n * 3, dtype=np.float16).reshape(n, 3)}
    store = tmp_path / "key"
    make_shards(store, mats, 2, [np.arange(0, 4), np.arange(4, 8), np.arange(4, 8)[::-1]])
    (partial_dir(store) / "assemble-stale").mkdir()  # left by a process killed while assembling
    assemble_store(store, manifest_for([str(i) for i in range(n)], mats, 2))
    assert np.array_equal(ActivationStore.open(store).acts("l"), mats["l"])
    assert sorted(p.name for p in store.iterdir()) == sorted([MANIFEST, "layer=l"])
    assert sorted(p.name for p in layer_dir(store, "l").iterdir()) == [ACTS, TOPK]


def test_iter_row_chunks_reads_rows_in_order(tmp_path):
    mat = np.arange(40, dtype=np.float16).reshape(10, 4)
    np.save(tmp_path / "m.npy", mat)
    got = [(start, chunk.copy()) for start, chunk in iter_row_chunks(tmp_path / "m.npy", chunk_bytes=3 * 2 * 4)]
    assert [s for s, _ in got] == [0, 3, 6, 9]
    assert np.array_equal(np.concatenate([c for _, c in got]), mat)
    np.save(tmp_path / "bad.npy", mat.astype(np.float32))
    with pytest.raises(ValueError, match="float16"):
        list(iter_row_chunks(tmp_path / "bad.npy"))


def test_open_refuses_incomplete_store(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete activation store"):
        ActivationStore.open(tmp_path / "half")
