"""The activation store: per layer a float32 [N_clips, M_units] matrix, its tie-break statistic, exact top/bottom-K
clips and unit statistics.

Layout of one store (a directory named by its content key, see `and_lightning.stages.collect.store_key`):

    <key>/manifest.json                   model/dataset hashes, layers + widths, reduction, preprocessing, clip_ids,
                                          top_k, tie_break (layer -> what its tie-break statistic is)
    <key>/layer=<name>/acts.f32.npy       float32 [N, M], row i = clip_ids[i] (open read-only with mmap)
    <key>/layer=<name>/tiebreak.f32.npy   float32 [N, M], the statistic that orders clips of equal activation
    <key>/layer=<name>/peak.f32.npy       float32 [N, M], seconds of each unit's peak frame in the clip (NaN: the
                                          layer has no time axis); only in stores collected with peak times
    <key>/layer=<name>/topk.npz           top_/bottom_ rows, ids, values, tiebreak [M, K]; top_/bottom_ ties and
                                          unresolved [M] (see `RunningTopK`); mean, std [M]

Collection writes *shards* first (`<key>.partial/shards/rows-*.npz`: a set of row indices and their two float32
matrices for all layers [n, U]), each committed atomically. `assemble_store` then builds the store in a private
folder from the shards (streaming: one shard in memory at a time, rows written with pwrite), computes each
layer's top-K and statistics from plain chunked reads of its matrices, and renames that folder onto `<key>`: a
store is complete or absent, and a killed collection resumes from its finished shards.

Clips are ranked by one rule, `top_clip_index`: by activation, equal activations by the tie-break statistic,
then the lower row. It is exact and independent of how rows were split into batches, shards or ranks.
Format 1 (float16 matrices, ties by clip order) is refused by `ActivationStore.open`; its stores have other keys.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from and_lightning.store.atomic import atomic_path, write_json
from and_lightning.store.hashing import hash_bytes

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
ACTS = "acts.f32.npy"
TIEBREAK = "tiebreak.f32.npy"
PEAK = "peak.f32.npy"
TOPK = "topk.npz"
SHARDS = "shards"
READ_CHUNK_BYTES = 1 << 20  # rows read (and ranked) per step when streaming a matrix back from disk


def layer_dir(store: Path, layer: str) -> Path:
    return Path(store) / f"layer={layer}"


def partial_dir(store: Path) -> Path:
    """Where an unfinished collection of `store` keeps its shards (and private assembly folders)."""
    store = Path(store)
    return store.with_name(store.name + ".partial")


# ---------------------------------------------------------------------------------------------- exact top-K


def top_clip_index(values: Tensor, k: int, tiebreak: Tensor | None = None, faithful: bool = False) -> Tensor:
    """The clip ranking used everywhere: [k, M] row indices of the k largest `values` [N, M] of each column, best
    first; equal values go by `tiebreak` [N, M] (larger first), then to the lower row. Bottom-k clips are
    `top_clip_index(-values, k, -tiebreak)`. `faithful`: `torch.topk`'s order, as the original AND code (ties
    in the kernel's order, `tiebreak` unused).

    Columns whose k-th largest value is shared by no row beyond the k-th place (most columns) take their k rows
    from `torch.topk` (linear in N) and only those are ordered; the others are ordered in full."""
    if faithful:
        return torch.topk(values, k=k, dim=0).indices
    if tiebreak is not None:
        tiebreak = tiebreak.to(values.device)
    if k == 0 or k >= values.shape[0]:
        return _order(values, tiebreak)[:k]
    top = torch.topk(values, k, dim=0).values  # NaN ranks first, as in a descending sort
    above = values >= top[-1]
    clear = (above.sum(dim=0) == k) & ~top[0].isnan()  # exactly k rows reach the k-th value: they are the top-k
    rows = torch.empty(k, values.shape[1], dtype=torch.int64, device=values.device)
    rows[:, clear] = torch.nonzero(above[:, clear].T)[:, 1].view(-1, k).T  # ascending rows per column
    if not clear.all():
        crowded = ~clear
        rows[:, crowded] = _order(values[:, crowded], None if tiebreak is None else tiebreak[:, crowded])[:k]
    order = _order(values.gather(0, rows), None if tiebreak is None else tiebreak.gather(0, rows))
    return rows.gather(0, order)


def _order(values: Tensor, tiebreak: Tensor | None) -> Tensor:
    """[N, M] positions of each column by value, then `tiebreak`, both descending; full ties keep their order."""
    order = None
    if tiebreak is not None:  # two stable sorts: by the tie-break statistic, then by value
        order = torch.sort(tiebreak, dim=0, descending=True, stable=True).indices
        values = values.gather(0, order)
    idx = torch.sort(values, dim=0, descending=True, stable=True).indices
    return idx if order is None else order.gather(0, idx)


@dataclass
class _Kept:
    """One side of a RunningTopK: kept values, tie-break values and rows [<=K, M] (signed: negated for the bottom
    side), and per unit the counts of left-out clips tying the K-th kept one."""

    values: Tensor
    tiebreak: Tensor
    rows: Tensor
    ties: Tensor
    unresolved: Tensor


class RunningTopK:
    """Exact top-K and bottom-K of every column of a matrix fed in row order (chunks from row 0 on), in
    `top_clip_index`'s order, with per unit and side:
    - `ties`: clips left out whose activation equals the K-th kept clip's (the tie-break statistic chose);
    - `unresolved`: of those, the ones whose tie-break statistic is equal too (the lower row was kept).
    Once K rows are held, only units where a new value reaches the K-th kept value are re-ranked.
    """

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"top-K needs k >= 1, got {k}")
        self.k = int(k)
        self.rows_seen = 0
        self._sides: dict[str, _Kept] = {}

    def update(self, values: np.ndarray, tiebreak: np.ndarray) -> None:
        """values, tiebreak: float32 [B, M], the matrix rows `rows_seen` .. `rows_seen + B - 1`."""
        v, t = torch.from_numpy(np.asarray(values, np.float32)), torch.from_numpy(np.asarray(tiebreak, np.float32))
        rows = torch.arange(self.rows_seen, self.rows_seen + v.shape[0])
        self.rows_seen += v.shape[0]
        for side, sign in (("top", 1.0), ("bottom", -1.0)):
            self._fold(side, sign * v, sign * t, rows)

    def _fold(self, side: str, v: Tensor, t: Tensor, rows: Tensor) -> None:
        m = v.shape[1]
        kept = self._sides.get(side)
        if kept is None:
            zeros = torch.zeros(m, dtype=torch.int64)
            kept = self._sides[side] = _Kept(v[:0], t[:0], rows[:0, None].expand(0, m), zeros, zeros.clone())
        full = kept.values.shape[0] == self.k
        units = torch.nonzero(v.amax(dim=0) >= kept.values[-1]).squeeze(1) if full else torch.arange(m)
        if units.numel() == 0:
            return
        cv = torch.cat([kept.values[:, units], v[:, units]])
        ct = torch.cat([kept.tiebreak[:, units], t[:, units]])
        cr = torch.cat([kept.rows[:, units], rows[:, None].expand(-1, units.numel())])
        idx = top_clip_index(cv, min(self.k, cv.shape[0]), ct)
        new_v, new_t, new_r = cv.gather(0, idx), ct.gather(0, idx), cr.gather(0, idx)
        same_v = cv == new_v[-1]
        same_vt = same_v & (ct == new_t[-1])
        ties = same_v.sum(0) - (new_v == new_v[-1]).sum(0)
        unresolved = same_vt.sum(0) - ((new_v == new_v[-1]) & (new_t == new_t[-1])).sum(0)
        if kept.values.shape[0]:  # left-out clips of earlier chunks still tie if the K-th kept clip is as before
            was_v = new_v[-1] == kept.values[-1, units]
            ties += torch.where(was_v, kept.ties[units], 0)
            unresolved += torch.where(was_v & (new_t[-1] == kept.tiebreak[-1, units]), kept.unresolved[units], 0)
        if full:
            kept.values[:, units], kept.tiebreak[:, units], kept.rows[:, units] = new_v, new_t, new_r
            kept.ties[units], kept.unresolved[units] = ties, unresolved
        else:
            self._sides[side] = _Kept(new_v, new_t, new_r, ties, unresolved)

    def result(self) -> dict[str, np.ndarray]:
        """{side}_rows, _values, _tiebreak [M, K] best first (bottom: lowest first), {side}_ties, _unresolved [M],
        for side in top, bottom."""
        if not self._sides:
            raise ValueError("top-K of zero rows: no values were added")
        out = {}
        for side, sign in (("top", 1.0), ("bottom", -1.0)):
            kept = self._sides[side]
            out |= {f"{side}_rows": kept.rows.T.contiguous().numpy(),
                    f"{side}_values": (sign * kept.values).T.contiguous().numpy(),
                    f"{side}_tiebreak": (sign * kept.tiebreak).T.contiguous().numpy(),
                    f"{side}_ties": kept.ties.numpy(), f"{side}_unresolved": kept.unresolved.numpy()}
        return out


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
    """Create `path` as a zero-filled float32 .npy of `shape`; return the byte offset of its data."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    offset = int(mm.offset)
    del mm
    return offset


def _write_rows(fd: int, offset: int, rows: np.ndarray, data: np.ndarray) -> None:
    """pwrite rows `data` [n, M] at row indices `rows` of a .npy matrix (one call per contiguous run)."""
    order = np.argsort(rows, kind="stable")
    rows, data = rows[order], data[order]
    row_bytes = data.shape[1] * data.itemsize
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
        os.pwrite(fd, np.ascontiguousarray(data[start:stop]).tobytes(), offset + int(rows[start]) * row_bytes)


def iter_row_chunks(path: Path, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first_row, float32 [b, M]) chunks of a 2-D .npy in row order, read with plain file reads (no mmap,
    so the process's resident memory stays one chunk). The chunk buffer is reused: use it before the next step."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if fortran or dtype != np.float32 or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-order float32 matrix, got {dtype} {shape}")
        n, m = shape
        chunk = max(1, chunk_bytes // max(1, 4 * m))
        buf = np.empty((min(chunk, max(n, 1)), m), np.float32)
        for start in range(0, n, chunk):
            view = buf[: min(chunk, n - start)]
            got = f.readinto(memoryview(view).cast("B"))
            if got != view.nbytes:
                raise ValueError(f"{path}: truncated at row {start} ({got} of {view.nbytes} bytes)")
            yield start, view


# ------------------------------------------------------------------------------------------------ shards


def write_shard(shard_dir: Path, layers: Mapping[str, int], rows: np.ndarray, acts: np.ndarray,
                tiebreak: np.ndarray, peak: np.ndarray | None = None) -> Path:
    """Commit one shard: row indices [n] and the float32 activations and tie-break statistics [n, U] of all
    `layers` (name -> units, columns in that order, U = their sum), and the peak frame times [n, U] when given.
    The name derives from the rows (same rows, same file).
    """
    rows = np.asarray(rows, dtype=np.int64)
    arrays = {"layers": np.array(list(layers)), "units": np.array(list(layers.values()), np.int64), "rows": rows,
              "acts": np.asarray(acts, np.float32), "tiebreak": np.asarray(tiebreak, np.float32)}
    if peak is not None:
        arrays["peak"] = np.asarray(peak, np.float32)
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

    `manifest` must hold "clip_ids", "layers" ([{"name", "units"}]) and "top_k" (and the peak times are assembled
    when its "preprocessing" has "peak_times"); it is written as manifest.json
    last, and the folder appears at `store` by one rename. Safe to call again after a crash (starts over from
    the shards); if another process finished first, its store is kept.
    """
    store = Path(store)
    partial = partial_dir(store)
    clip_ids = list(manifest["clip_ids"])
    n = len(clip_ids)
    layers = {spec["name"]: int(spec["units"]) for spec in manifest["layers"]}
    columns = np.cumsum([0, *layers.values()])
    names = (ACTS, TIEBREAK, PEAK) if manifest.get("preprocessing", {}).get("peak_times") else (ACTS, TIEBREAK)
    shards = _usable_shards(partial / SHARDS, n)
    work = partial / f"assemble-{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    with ExitStack() as stack:
        files, offsets = [], []  # per layer: (activations, tie-break statistic[, peak times])
        for layer, units in layers.items():
            layer_dir(work, layer).mkdir()
            tmps = [stack.enter_context(atomic_path(layer_dir(work, layer) / name)) for name in names]
            offsets.append([_npy_header_offset(tmp, (n, units)) for tmp in tmps])
            files.append([stack.enter_context(open(tmp, "r+b")) for tmp in tmps])
        for path in shards:
            with np.load(path) as z:
                if z["layers"].tolist() != list(layers) or z["units"].tolist() != list(layers.values()):
                    raise ValueError(f"{path}: holds layers {dict(zip(z['layers'].tolist(), z['units'].tolist()))}"
                                     f", expected {layers}")
                if "tiebreak" not in z.files or z["acts"].dtype != np.float32:
                    raise ValueError(f"{path}: a shard of another store format (float16, no tie-break statistic); "
                                     f"delete {partial} and collect again")
                if len(names) == 3 and "peak" not in z.files:
                    raise ValueError(f"{path}: a shard without peak times in a store that records them; delete "
                                     f"{partial} and collect again")
                rows, matrices = z["rows"], tuple(z[k] for k in ("acts", "tiebreak", "peak")[:len(names)])
                for i in range(len(layers)):
                    for f, offset, mat in zip(files[i], offsets[i], matrices):
                        _write_rows(f.fileno(), offset, rows, mat[:, columns[i]:columns[i + 1]])
        for f in (f for pair in files for f in pair):
            f.flush()
    for layer in layers:
        folder = layer_dir(work, layer)
        write_npz_stable(folder / TOPK, _layer_topk(folder, int(manifest["top_k"]), np.asarray(clip_ids)))
    write_json(work / MANIFEST, dict(manifest))
    try:
        os.rename(work, store)
    except OSError:
        if not (store / MANIFEST).is_file():
            raise
        shutil.rmtree(work)  # another process completed the same store first
    shutil.rmtree(partial, ignore_errors=True)
    return store


def _layer_topk(folder: Path, k: int, ids: np.ndarray) -> dict[str, np.ndarray]:
    """topk.npz contents of one layer folder (its two matrices streamed in row chunks): `RunningTopK`'s result,
    the clip ids of its rows (`ids`: all clip ids in row order), and the units' mean and std."""
    acc = moments = None
    for (_, acts), (_, tiebreak) in zip(iter_row_chunks(folder / ACTS), iter_row_chunks(folder / TIEBREAK)):
        acc, moments = acc or RunningTopK(k), moments or RunningMoments(acts.shape[1])
        acc.update(acts, tiebreak)
        moments.update(acts)
    if acc is None:
        raise ValueError(f"{folder}: no rows")
    best = acc.result()
    return {**best, "top_ids": ids[best["top_rows"]], "bottom_ids": ids[best["bottom_rows"]],
            "mean": moments.mean.astype(np.float32), "std": moments.std().astype(np.float32)}


# ------------------------------------------------------------------------------------------------ reader


@dataclass(frozen=True)
class TopK:
    """Per unit (rows of each [M, K] array), the K highest / lowest clips, best first, their activations and
    tie-break statistics; per unit [M] the clips left out that tie the K-th kept activation (`*_ties`) and, of
    those, the ones the tie-break statistic could not separate either (`*_unresolved`: the lower row was kept);
    unit statistics."""

    top_rows: np.ndarray
    top_ids: np.ndarray
    top_values: np.ndarray
    top_tiebreak: np.ndarray
    top_ties: np.ndarray
    top_unresolved: np.ndarray
    bottom_rows: np.ndarray
    bottom_ids: np.ndarray
    bottom_values: np.ndarray
    bottom_tiebreak: np.ndarray
    bottom_ties: np.ndarray
    bottom_unresolved: np.ndarray
    mean: np.ndarray
    std: np.ndarray


class ActivationStore:
    """Read access to one complete store: manifest, clip ids, acts(layer) / tiebreak(layer) memmaps, topk(layer)."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self.clip_ids: list[str] = list(manifest["clip_ids"])
        self.layers: dict[str, int] = {s["name"]: int(s["units"]) for s in manifest["layers"]}
        self.top_k = int(manifest["top_k"])
        self.tie_break: dict[str, str] = dict(manifest["tie_break"])  # layer -> what its tie-break statistic is
        self._rows = {c: i for i, c in enumerate(self.clip_ids)}

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ActivationStore":
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"{path}: not a complete activation store (no {MANIFEST})")
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path / MANIFEST}: activation store format {manifest.get('format')!r}, this code reads "
                             f"format {FORMAT_VERSION} (float32 values, ties broken by a second statistic); delete "
                             f"{path} and collect again")
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
        """Read-only float32 memmap [N_clips, units]."""
        return np.load(self._layer(layer) / ACTS, mmap_mode="r")

    def tiebreak(self, layer: str) -> np.ndarray:
        """Read-only float32 memmap [N_clips, units]: the statistic (`tie_break[layer]`) that orders equal
        activations."""
        return np.load(self._layer(layer) / TIEBREAK, mmap_mode="r")

    def peak(self, layer: str) -> np.ndarray:
        """Read-only float32 memmap [N_clips, units]: seconds of each unit's peak frame in each clip (NaN: the layer
        has no time axis); a clear error for a store collected without peak times."""
        path = self._layer(layer) / PEAK
        if not path.is_file():
            raise FileNotFoundError(f"{self.path}: collected without peak times (exemplars=clip); collect with "
                                    "exemplars=window to record them")
        return np.load(path, mmap_mode="r")

    def topk(self, layer: str, k: int | None = None) -> TopK:
        """Top/bottom-k of `layer` (k defaults to the store's K; another k is computed once from the stored
        matrices, streaming, and cached beside them as topk-k<k>.npz)."""
        folder = self._layer(layer)
        path = folder / TOPK
        k_eff = self.top_k if k is None else min(int(k), self.n_clips)
        if k_eff != self.top_k:
            path = folder / f"topk-k{k_eff}.npz"
            if not path.is_file():
                write_npz_stable(path, _layer_topk(folder, k_eff, np.asarray(self.clip_ids)))
        with np.load(path) as z:
            return TopK(**{f.name: z[f.name] for f in fields(TopK)})
