"""The activation store: per layer a float16 [N_clips, M_units] matrix, exact top/bottom-K clips and unit statistics.

Layout of one store (a directory named by its content key, see `and_lightning.stages.collect.store_key`):

    <key>/manifest.json              model/dataset hashes, layers + widths, reduction, preprocessing, clip_ids, top_k
    <key>/layer=<name>/acts.f16.npy  float16 [N, M], row i = clip_ids[i] (open read-only with mmap)
    <key>/layer=<name>/topk.npz      top_/bottom_ rows, ids, values [M, K]; mean, std [M] (over the float16 values)

Collection writes *shards* first (`<key>.partial/shards/rows-*.npz`: a set of row indices, their float16
activations for all layers [n, U] and a running top/bottom-K state covering them), each committed atomically.
`assemble_store` then builds the store in a private folder from the shards (streaming: one shard in memory at
a time, rows written with pwrite, statistics from plain chunked reads) and renames that folder onto `<key>`: a
store is complete or absent, and a killed collection resumes from its finished shards.

Top-K is exact and independent of how rows were split into batches, shards or ranks: each (value, row) pair is
packed into one int64 key (order-preserving float16 code << 32 | inverted row), so ties go to the lower row, as
a stable numpy argsort would order them.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from and_lightning.store.atomic import atomic_path, write_json
from and_lightning.store.hashing import hash_bytes

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ACTS = "acts.f16.npy"
TOPK = "topk.npz"
SHARDS = "shards"
READ_CHUNK_BYTES = 8 << 20  # rows read per step when streaming a matrix back from disk

F16_MAX = float(np.finfo(np.float16).max)
CODE_MAX = 0xFFFF
ROW_MASK = (1 << 32) - 1
TOPK_FIELDS = ("top_rows", "top_ids", "top_values", "bottom_rows", "bottom_ids", "bottom_values", "mean", "std")


def layer_dir(store: Path, layer: str) -> Path:
    return Path(store) / f"layer={layer}"


def partial_dir(store: Path) -> Path:
    """Where an unfinished collection of `store` keeps its shards (and private assembly folders)."""
    store = Path(store)
    return store.with_name(store.name + ".partial")


# ---------------------------------------------------------------------------------------------- exact top-K


def ordered_codes(values: np.ndarray) -> np.ndarray:
    """float16 array -> int64 codes in [0, 65535] ordered like the values (-0 counts as +0; no NaN)."""
    bits = np.asarray(values, np.float16).view(np.int16).astype(np.int64)
    bits[bits == -0x8000] = 0  # -0.0 -> +0.0
    return (bits ^ ((bits >> 15) & 0x7FFF)) + 0x8000  # negative floats: flip the magnitude bits


def decode_codes(codes: np.ndarray) -> np.ndarray:
    """Inverse of `ordered_codes`: int codes -> float16 values."""
    signed = np.asarray(codes, np.int64) - 0x8000
    return (signed ^ ((signed >> 15) & 0x7FFF)).astype(np.int16).view(np.float16)


def keys_of(values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float16 [B, M] at row indices [B] -> (top keys, bottom keys), int64 [M, B]; a larger key ranks higher.

    key = (order code of the value, or its complement for bottom-K) << 32 | (2**32 - 1 - row).
    """
    codes = np.ascontiguousarray(ordered_codes(values).T)
    tail = ROW_MASK - np.asarray(rows, np.int64)
    return (codes << 32) | tail, ((CODE_MAX - codes) << 32) | tail


def best_keys(candidates: np.ndarray, k: int) -> np.ndarray:
    """Per row of int64 keys `candidates` [M, C] (all >= 0), the k largest distinct ones, largest first.

    Repeated keys (the same row offered by two cumulative shard states) count once.
    """
    s = np.sort(candidates, axis=1)[:, ::-1]
    dup = s[:, 1:] == s[:, :-1]
    if dup.any():
        s[:, 1:][dup] = -1
        s = -np.sort(-s, axis=1)
        k = min(k, int((s >= 0).sum(axis=1).min()))
    return np.ascontiguousarray(s[:, :k])


class RunningTopK:
    """Exact running top-K and bottom-K per unit over float16 rows; equal values rank the lower row first.

    State: two int64 key matrices [M, <=K], best first (see `keys_of`). `update` folds in a batch of rows:
    once K rows are held, only the units where a new value reaches the K-th kept value (one min/max pass)
    are merged. `merge` folds in another accumulator's keys (shards, ranks); repeated keys count once.
    """

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"top-K needs k >= 1, got {k}")
        self.k = int(k)
        self.top_keys: np.ndarray | None = None
        self.bottom_keys: np.ndarray | None = None
        self._floor = self._ceil = np.empty(0, np.float32)  # K-th highest / lowest value kept, per unit

    def update(self, values: np.ndarray, rows: np.ndarray) -> None:
        """values: float16 [B, M] (rows of the activation matrix); rows: int64 [B], their row indices."""
        values, rows = np.asarray(values, np.float16), np.asarray(rows, np.int64)
        if self.top_keys is None or self.top_keys.shape[1] < self.k:
            self.merge(*keys_of(values, rows))
            return
        low, high = (t.numpy() for t in torch.aminmax(torch.from_numpy(values).float(), dim=0))
        for side, units in (("top", np.flatnonzero(high >= self._floor)),
                            ("bottom", np.flatnonzero(low <= self._ceil))):
            if units.size:
                state = getattr(self, f"{side}_keys")
                new = keys_of(values[:, units], rows)[side == "bottom"]
                state[units] = best_keys(np.concatenate([state[units], new], axis=1), self.k)
                self._refresh_bounds(units)

    def merge(self, top_keys: np.ndarray, bottom_keys: np.ndarray) -> None:
        for side, new in (("top", top_keys), ("bottom", bottom_keys)):
            state = getattr(self, f"{side}_keys")
            cand = new if state is None else np.concatenate([state, new], axis=1)
            setattr(self, f"{side}_keys", best_keys(cand, self.k))
        self._refresh_bounds(slice(None))

    def _refresh_bounds(self, units: np.ndarray | slice) -> None:
        if self.top_keys.shape[1] < self.k:
            return
        if self._floor.shape[0] != self.top_keys.shape[0]:
            self._floor = np.empty(self.top_keys.shape[0], np.float32)
            self._ceil = np.empty(self.top_keys.shape[0], np.float32)
        self._floor[units] = decode_codes(self.top_keys[units, -1] >> 32)
        self._ceil[units] = decode_codes(CODE_MAX - (self.bottom_keys[units, -1] >> 32))

    def result(self) -> dict[str, np.ndarray]:
        """{"top_rows", "top_values", "bottom_rows", "bottom_values"}: [M, K], best first (values float32)."""
        if self.top_keys is None or self.bottom_keys is None:
            raise ValueError("top-K of zero rows: no values were added")
        return {
            "top_rows": ROW_MASK - (self.top_keys & ROW_MASK),
            "top_values": decode_codes(self.top_keys >> 32).astype(np.float32),
            "bottom_rows": ROW_MASK - (self.bottom_keys & ROW_MASK),
            "bottom_values": decode_codes(CODE_MAX - (self.bottom_keys >> 32)).astype(np.float32),
        }


class RunningMoments:
    """Per-unit mean and population std (ddof=0) over row chunks, float64 (Chan et al.'s pairwise update)."""

    def __init__(self, units: int):
        self.n = 0
        self.mean = np.zeros(units, np.float64)
        self.m2 = np.zeros(units, np.float64)

    def update(self, chunk: np.ndarray) -> None:
        x = chunk.astype(np.float64)
        b = x.shape[0]
        if b == 0:
            return
        mean_b = x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        total = self.n + b
        delta = mean_b - self.mean
        self.mean += delta * (b / total)
        self.m2 += m2_b + delta**2 * (self.n * b / total)
        self.n = total

    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))


# ------------------------------------------------------------------------------------------ file helpers


def write_npz_stable(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Atomically write an uncompressed .npz whose bytes depend only on the arrays (fixed zip timestamps)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def _npy_header_offset(path: Path, shape: tuple[int, int]) -> int:
    """Create `path` as a zero-filled float16 .npy of `shape`; return the byte offset of its data."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    offset = int(mm.offset)
    del mm
    return offset


def _write_rows(fd: int, offset: int, rows: np.ndarray, data: np.ndarray) -> None:
    """pwrite float16 rows `data` [n, M] at row indices `rows` of a .npy matrix (one call per contiguous run)."""
    order = np.argsort(rows, kind="stable")
    rows, data = rows[order], data[order]
    row_bytes = data.shape[1] * data.itemsize
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
        os.pwrite(fd, np.ascontiguousarray(data[start:stop]).tobytes(), offset + int(rows[start]) * row_bytes)


def iter_row_chunks(path: Path, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first_row, float16 [b, M]) chunks of a 2-D .npy in row order, read with plain file reads (no mmap,
    so the process's resident memory stays one chunk). The chunk buffer is reused: use it before the next step."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if fortran or dtype != np.float16 or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-order float16 matrix, got {dtype} {shape}")
        n, m = shape
        chunk = max(1, chunk_bytes // max(1, 2 * m))
        buf = np.empty((min(chunk, max(n, 1)), m), np.float16)
        for start in range(0, n, chunk):
            view = buf[: min(chunk, n - start)]
            got = f.readinto(memoryview(view).cast("B"))
            if got != view.nbytes:
                raise ValueError(f"{path}: truncated at row {start} ({got} of {view.nbytes} bytes)")
            yield start, view


# ------------------------------------------------------------------------------------------------ shards


def write_shard(shard_dir: Path, layers: Mapping[str, int], rows: np.ndarray, acts: np.ndarray,
                top_keys: np.ndarray, bottom_keys: np.ndarray) -> Path:
    """Commit one shard: row indices [n], float16 rows [n, U] of all `layers` (name -> units, columns in that
    order, U = their sum) and a RunningTopK state over (at least) those rows, keys [U, <=K].
    The name derives from the rows (same rows, same file).
    """
    rows = np.asarray(rows, dtype=np.int64)
    arrays = {"layers": np.array(list(layers)), "units": np.array(list(layers.values()), np.int64), "rows": rows,
              "acts": acts, "top": top_keys, "bottom": bottom_keys}
    path = Path(shard_dir) / f"rows-{int(rows.min()):09d}-{hash_bytes(rows.tobytes())[:12]}.npz"
    write_npz_stable(path, arrays)
    return path


def shard_files(shard_dir: Path) -> list[Path]:
    return sorted(Path(shard_dir).glob("rows-*.npz")) if Path(shard_dir).is_dir() else []


def _shard_rows(path: Path) -> np.ndarray:
    try:
        with np.load(path) as z:
            return z["rows"]
    except Exception as e:  # a committed shard is complete; failing to read it means the disk lies
        raise ValueError(f"{path}: unreadable activation shard ({type(e).__name__}: {e}); delete it to recompute")


def finished_rows(shard_dir: Path, n_rows: int) -> np.ndarray:
    """bool [n_rows]: rows already held by a committed shard."""
    done = np.zeros(n_rows, bool)
    for path in shard_files(shard_dir):
        done[_shard_rows(path)] = True
    return done


def _usable_shards(shard_dir: Path, n_rows: int) -> list[Path]:
    """Shards covering every row exactly once (a shard fully covered by earlier ones is a duplicate: skipped)."""
    covered = np.zeros(n_rows, bool)
    chosen = []
    for path in shard_files(shard_dir):
        rows = _shard_rows(path)
        seen = covered[rows]
        if seen.all():
            continue
        if seen.any():
            raise ValueError(f"{path}: overlaps other shards in {shard_dir} (two collections ran at once?); "
                             f"delete {shard_dir.parent} to recollect")
        covered[rows] = True
        chosen.append(path)
    if not covered.all():
        missing = np.flatnonzero(~covered)
        raise ValueError(f"{shard_dir}: {len(missing)} of {n_rows} rows have no shard (first: row {missing[0]}); "
                         "a collection rank failed; rerun to compute them")
    return chosen


# ---------------------------------------------------------------------------------------------- assembly


def assemble_store(store: Path, manifest: Mapping[str, Any]) -> Path:
    """Build the complete store `store` from the shards in `partial_dir(store)`, then remove the partial folder.

    `manifest` must hold "clip_ids", "layers" ([{"name", "units"}]) and "top_k"; it is written as manifest.json
    last, and the folder appears at `store` by one rename. Safe to call again after a crash (starts over from
    the shards); if another process finished first, its store is kept.
    """
    store = Path(store)
    partial = partial_dir(store)
    clip_ids = list(manifest["clip_ids"])
    n = len(clip_ids)
    layers = {spec["name"]: int(spec["units"]) for spec in manifest["layers"]}
    columns = np.cumsum([0, *layers.values()])
    shards = _usable_shards(partial / SHARDS, n)
    work = partial / f"assemble-{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    acc = RunningTopK(int(manifest["top_k"]))  # over all units of all layers
    with ExitStack() as stack:
        tmps, files, offsets = [], [], []
        for layer, units in layers.items():
            layer_dir(work, layer).mkdir()
            tmps.append(stack.enter_context(atomic_path(layer_dir(work, layer) / ACTS)))
            offsets.append(_npy_header_offset(tmps[-1], (n, units)))
            files.append(stack.enter_context(open(tmps[-1], "r+b")))
        for path in shards:
            with np.load(path) as z:
                if z["layers"].tolist() != list(layers) or z["units"].tolist() != list(layers.values()):
                    raise ValueError(f"{path}: holds layers {dict(zip(z['layers'].tolist(), z['units'].tolist()))}"
                                     f", expected {layers}")
                rows, acts = z["rows"], z["acts"]
                for i, f in enumerate(files):
                    _write_rows(f.fileno(), offsets[i], rows, acts[:, columns[i]:columns[i + 1]])
                acc.merge(z["top"], z["bottom"])
        for f in files:
            f.flush()
        best = acc.result()
        ids = np.asarray(clip_ids)
        for i, (layer, units) in enumerate(layers.items()):
            moments = RunningMoments(units)
            for _, chunk in iter_row_chunks(tmps[i]):
                moments.update(chunk)
            part = {key: value[columns[i]:columns[i + 1]] for key, value in best.items()}
            write_npz_stable(layer_dir(work, layer) / TOPK, _topk_arrays(part, ids, moments))
    write_json(work / MANIFEST, dict(manifest))
    try:
        os.rename(work, store)
    except OSError:
        if not (store / MANIFEST).is_file():
            raise
        shutil.rmtree(work)  # another process completed the same store first
    shutil.rmtree(partial, ignore_errors=True)
    return store


def _topk_arrays(best: Mapping[str, np.ndarray], ids: np.ndarray, moments: RunningMoments) -> dict[str, np.ndarray]:
    """topk.npz contents from a RunningTopK result (one layer's units), the clip ids and the unit moments."""
    return {
        "top_rows": best["top_rows"], "top_ids": ids[best["top_rows"]], "top_values": best["top_values"],
        "bottom_rows": best["bottom_rows"], "bottom_ids": ids[best["bottom_rows"]],
        "bottom_values": best["bottom_values"],
        "mean": moments.mean.astype(np.float32), "std": moments.std().astype(np.float32),
    }


# ------------------------------------------------------------------------------------------------ reader


@dataclass(frozen=True)
class TopK:
    """Per unit (rows of each [M, K] array), the K highest / lowest clips, best first, and unit statistics."""

    top_rows: np.ndarray
    top_ids: np.ndarray
    top_values: np.ndarray
    bottom_rows: np.ndarray
    bottom_ids: np.ndarray
    bottom_values: np.ndarray
    mean: np.ndarray
    std: np.ndarray


class ActivationStore:
    """Read access to one complete store: manifest, clip ids, acts(layer) memmaps, topk(layer)."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self.clip_ids: list[str] = list(manifest["clip_ids"])
        self.layers: dict[str, int] = {s["name"]: int(s["units"]) for s in manifest["layers"]}
        self.top_k = int(manifest["top_k"])
        self._rows = {c: i for i, c in enumerate(self.clip_ids)}

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ActivationStore":
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"{path}: not a complete activation store (no {MANIFEST})")
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path / MANIFEST}: store format {manifest.get('format')!r}, "
                             f"this code reads format {FORMAT_VERSION}")
        return cls(path, manifest)

    @property
    def n_clips(self) -> int:
        return len(self.clip_ids)

    def row_of(self, clip_id: str) -> int:
        return self._rows[clip_id]

    def _layer(self, layer: str) -> Path:
        if layer not in self.layers:
            raise KeyError(f"layer '{layer}' is not in the store {self.path}; stored: {', '.join(self.layers)}")
        return layer_dir(self.path, layer)

    def acts(self, layer: str) -> np.ndarray:
        """Read-only float16 memmap [N_clips, units]."""
        return np.load(self._layer(layer) / ACTS, mmap_mode="r")

    def topk(self, layer: str, k: int | None = None) -> TopK:
        """Top/bottom-k of `layer` (k defaults to the store's K; another k is computed once from the
        float16 matrix, streaming, and cached beside it as topk-k<k>.npz)."""
        folder = self._layer(layer)
        path = folder / TOPK
        k_eff = self.top_k if k is None else min(int(k), self.n_clips)
        if k_eff != self.top_k:
            path = folder / f"topk-k{k_eff}.npz"
            if not path.is_file():
                self._write_topk(layer, k_eff, path)
        with np.load(path) as z:
            return TopK(**{name: z[name] for name in TOPK_FIELDS})

    def _write_topk(self, layer: str, k: int, path: Path) -> None:
        acc = RunningTopK(k)
        moments = RunningMoments(self.layers[layer])
        for start, chunk in iter_row_chunks(self._layer(layer) / ACTS):
            acc.update(chunk, np.arange(start, start + len(chunk)))
            moments.update(chunk)
        write_npz_stable(path, _topk_arrays(acc.result(), np.asarray(self.clip_ids), moments))
