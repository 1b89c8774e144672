"""Stage 1: collect one activation per (clip, unit) for chosen layers into a content-addressed activation store.

`collect_activations` validates everything first (layers, clips, checkpoint, sample rate), keys the store by
what determines its contents (model weights + architecture, audio file contents and order, layers, reduction,
preprocessing), returns at once if that store exists, and otherwise runs a Lightning predict loop
(ProbeModule + ActivationWriter) over the clips that no finished shard holds, then assembles the store.

Distributed runs (`trainer_kwargs={"strategy": "ddp" | "ddp_spawn", "devices": n, ...}`): Lightning's predict
sampler gives each rank a disjoint share of the remaining clips, each rank commits its own shards, and after
a barrier global rank 0 assembles the store (with ddp_spawn the launching process does, after the workers end).
The store is identical whatever the number of ranks, batches or restarts.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import lightning as L
import numpy as np
from filelock import FileLock
from lightning.pytorch.utilities.rank_zero import rank_zero_only
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from and_lightning.checkpoints import load_checkpoint, load_weights
from and_lightning.data.clips import ClipDataset, ClipRecord, DatasetIndex
from and_lightning.lit.probe import ProbeModule
from and_lightning.lit.writers import ActivationWriter
from and_lightning.models.base import TargetAdapter
from and_lightning.store.activations import (
    FORMAT_VERSION, MANIFEST, SHARDS, ActivationStore, assemble_store, finished_rows, partial_dir,
)
from and_lightning.store.hashing import hash_file, hash_obj

log = logging.getLogger(__name__)

SHARD_BYTES = 16 << 20  # float32 rows (values, tie-break[, peaks]) buffered per rank before a shard is committed ...
MAX_SHARD_ROWS = 4096  # ... and at most this many, so a killed run loses little work


def collect_activations(
    adapter: TargetAdapter,
    dataset: DatasetIndex | Sequence[ClipRecord],
    sample_rate: int | None,
    clip_seconds: float,
    layers: Sequence[str],
    reduction: str,
    store_root: str | os.PathLike,
    batch_size: int = 32,
    num_workers: int = 0,
    trainer_kwargs: Mapping[str, Any] | None = None,
    top_k: int = 5,
    progress: bool = True,
    *,
    checkpoint: str | os.PathLike | None = None,
    shard_rows: int | None = None,
    reuse_only: bool = False,
    pre_activation: bool = False,
    peak_times: bool = False,
) -> Path:
    """Collect activations of `layers` over every clip of `dataset` (in its order); return the store's path.

    - `dataset`: a DatasetIndex or its records; clips are loaded with ClipDataset at `sample_rate` (None: the
      adapter's rate; any other rate is an error, the model must see its own rate) and cut/padded to
      `clip_seconds`.
    - `layers`: logical layer names (stored in model order); `reduction`: mean | max | cls | token0.
    - `trainer_kwargs`: extra `lightning.Trainer` arguments (accelerator, devices, strategy, precision, ...;
      a Hydra `_target_` key is ignored). Inference mode is always on; logging and checkpointing are off.
    - `top_k`: clips kept per unit and side (ties by the tie-break statistic, see `lit/probe.py`, then clip
      order; the store counts them). A reused store collected with another K keeps its own topk.npz;
      the requested K is then computed from the stored matrix (no forward pass): read it with
      `ActivationStore.open(path).topk(layer, k=top_k)`.
    - `checkpoint`: optional weights to load into `adapter` first (a bare state dict, a `save_checkpoint` file or
      a Lightning checkpoint with the adapter under `model.`; tensors and plain data only, never unpickled).
    - `shard_rows`: rows per shard (default: up to 16 MiB of rows, at most 4096, a multiple of
      `batch_size`); a killed run restarts from its committed shards.
    - `reuse_only`: return an existing store, never collect (FileNotFoundError when there is none).
    - `pre_activation`: record layer outputs before their activation (faithful runs), not as the next layer
      reads them (see `TargetAdapter.unit_view`).
    - `peak_times`: also record each unit's peak frame time per clip (`ActivationStore.peak`; part of the store
      key only when set).
    Raises, before writing anything: UnknownLayerError (with the available names), ValueError for no clips or
    bad arguments, FileNotFoundError for a missing checkpoint or clip file.
    """
    records = _records(dataset)
    sample_rate = adapter.sample_rate if sample_rate is None else int(sample_rate)
    if sample_rate != adapter.sample_rate:
        raise ValueError(f"{type(adapter).__name__} expects {adapter.sample_rate} Hz input but sample_rate="
                         f"{sample_rate} was given; clips are resampled on load, so pass the model's rate")
    if clip_seconds <= 0 or batch_size < 1 or top_k < 1 or (shard_rows is not None and shard_rows < 1):
        raise ValueError(f"need clip_seconds > 0, batch_size >= 1, top_k >= 1, shard_rows >= 1; got "
                         f"{clip_seconds}, {batch_size}, {top_k}, {shard_rows}")
    if checkpoint is not None:
        load_weights(adapter, load_checkpoint(checkpoint, "checkpoint")["state_dict"], f"checkpoint: {checkpoint}")
    probe = ProbeModule(adapter, model_order(adapter, layers), reduction, pre_activation, peak_times)
    for name in probe.layer_names:
        if "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"layer name '{name}' cannot name a folder (layer=<name>/ in the store)")
    preprocessing = {"sample_rate": sample_rate, "clip_seconds": float(clip_seconds),
                     "num_samples": int(round(clip_seconds * sample_rate)), "pre_activation": bool(pre_activation)}
    if peak_times:
        preprocessing["peak_times"] = True
    model_hash, dataset_hash = model_fingerprint(adapter), dataset_fingerprint(records)
    key = store_key(model_hash, dataset_hash, probe.layer_names, reduction, preprocessing)
    store = Path(store_root) / key
    if (store / MANIFEST).is_file():
        log.info("activation store %s exists: reusing it (no forward pass)", store)
        _ensure_topk(store, top_k)
        return store
    if reuse_only:
        raise FileNotFoundError(f"{store}: no activation store for this model, data, layers and reduction yet; "
                                "run `python dissect.py stage=collect` first")
    k = min(top_k, len(records))
    manifest = {
        "format": FORMAT_VERSION, "key": key, "model": f"{type(adapter).__module__}.{type(adapter).__qualname__}",
        "model_hash": model_hash, "dataset_hash": dataset_hash,
        "layers": [{"name": name, "units": probe.widths[name]} for name in probe.layer_names],
        "reduction": reduction, "preprocessing": preprocessing, "top_k": k,
        "tie_break": {name: text for name, (_, text) in probe.tie_breaks.items()},
        "n_clips": len(records), "clip_ids": [r.clip_id for r in records],
    }
    with _exclusive(Path(store_root) / ".locks" / f"{key}.lock"):
        if (store / MANIFEST).is_file():  # another process collected it while we waited
            log.info("activation store %s was completed by another process: reusing it", store)
            _ensure_topk(store, top_k)
            return store
        shard_dir = partial_dir(store) / SHARDS
        shard_dir.mkdir(parents=True, exist_ok=True)
        remaining = np.flatnonzero(~finished_rows(shard_dir, len(records)))
        log.info("collecting %d of %d clips into %s", len(remaining), len(records), store)
        writer = ActivationWriter(shard_dir, {r.clip_id: i for i, r in enumerate(records)}, probe.widths,
                                  shard_rows or default_shard_rows(probe.widths, batch_size, 2 + peak_times),
                                  peak_times)
        trainer = L.Trainer(**_trainer_kwargs(trainer_kwargs, writer, progress))
        loader = DataLoader(Subset(ClipDataset(records, sample_rate, clip_seconds), remaining.tolist()),
                            batch_size=batch_size, shuffle=False, num_workers=num_workers)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Total length of `DataLoader` across ranks is zero")
            trainer.predict(probe, dataloaders=loader, return_predictions=False)  # no clips left: ranks just sync
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            assemble_store(store, manifest)
        trainer.strategy.barrier()
    return store


def store_key(model_hash: str, dataset_hash: str, layers: Sequence[str], reduction: str,
              preprocessing: Mapping[str, Any]) -> str:
    """sha256 naming a store by everything its contents depend on."""
    return hash_obj({"format": FORMAT_VERSION, "model": model_hash, "dataset": dataset_hash,
                     "layers": sorted(layers), "reduction": reduction, "preprocessing": dict(preprocessing)})


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's architecture (module classes and their plain settings) and every parameter and
    buffer (persistent or not): equal weights give equal hashes wherever they were loaded from."""
    structure = [
        [name, f"{type(m).__module__}.{type(m).__qualname__}",
         {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training" and _plain(v)}]
        for name, m in model.named_modules()
    ]
    h = hashlib.sha256(hash_obj(structure).encode())
    for kind, named in (("param", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            t = t.detach().cpu().contiguous()
            h.update(f"{kind}:{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def dataset_fingerprint(records: Sequence[ClipRecord]) -> str:
    """sha256 of the clip ids in order and the bytes of each clip's audio file."""
    items = []
    for r in records:
        if not Path(r.path).is_file():
            raise FileNotFoundError(f"clip '{r.clip_id}': audio file not found: {r.path}")
        items.append([r.clip_id, hash_file(r.path)])
    return hash_obj(items)


def model_order(adapter: TargetAdapter, layers: Sequence[str]) -> list[str]:
    """`layers` sorted in the adapter's layer order (unknown names raise UnknownLayerError; no duplicates)."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"duplicate layer names in {layers}")
    for name in layers:
        adapter.layer_module(name)
    order = {name: i for i, name in enumerate(adapter.layer_paths())}
    return sorted(layers, key=order.__getitem__)


def default_shard_rows(widths: Mapping[str, int], batch_size: int, matrices: int = 2) -> int:
    """Rows per shard: `matrices` float32 values per unit (values and tie-break statistic, and peak times)."""
    rows = min(MAX_SHARD_ROWS, SHARD_BYTES // (4 * matrices * max(1, sum(widths.values()))))
    return max(batch_size, rows // batch_size * batch_size)


def _records(dataset: DatasetIndex | Sequence[ClipRecord]) -> list[ClipRecord]:
    records = list(dataset.records if isinstance(dataset, DatasetIndex) else dataset)
    if not records:
        raise ValueError("collect_activations: the dataset has no clips")
    bad = [type(r).__name__ for r in records if not isinstance(r, ClipRecord)]
    if bad:
        raise TypeError(f"collect_activations: expected ClipRecord items, got {bad[0]}")
    ids = [r.clip_id for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError("collect_activations: clip_ids are not unique")
    return records


def _plain(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str, type(None))):
        return True
    return isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str, type(None))) for v in value)


def _trainer_kwargs(user: Mapping[str, Any] | None, writer: ActivationWriter, progress: bool) -> dict[str, Any]:
    kw = {k: v for k, v in dict(user or {}).items() if k != "_target_"}
    kw["callbacks"] = [*list(kw.get("callbacks") or []), writer]
    kw.setdefault("logger", False)
    kw.setdefault("enable_model_summary", False)
    kw.update(enable_checkpointing=False, enable_progress_bar=progress, inference_mode=True)
    return kw


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Serialise collections of one store across processes (a `filelock` lock on `lock`), so that concurrent
    jobs of a sweep compute it once. Only global rank 0 locks: the other ranks of a distributed run join it."""
    if rank_zero_only.rank != 0:
        yield
        return
    with FileLock(lock):
        yield


def _ensure_topk(store: Path, top_k: int) -> None:
    """Materialise top-`top_k` files for a reused store collected with another K (from the stored matrix)."""
    reader = ActivationStore.open(store)
    if min(top_k, reader.n_clips) != reader.top_k:
        for layer in reader.layers:
            reader.topk(layer, k=top_k)
