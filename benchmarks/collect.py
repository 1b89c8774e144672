"""Benchmark stage 1: collection overhead over a bare forward loop, and peak memory for N vs 4N clips.

For each model (all its layers, batch size 32, random 1 s clips at 16 kHz written as 16-bit WAV):
  (a) seconds for `model(x)` over the clips under torch.inference_mode, twice: on tensors already in memory,
      and fed by the same DataLoader (ClipDataset reading the files) the collection uses;
  (b) seconds for the whole collection stage (`collect_activations` into a fresh store: hashing, Lightning
      predict loop with hooks, writer, shards, assembly);
  (c) the ratio b / a for both kinds of (a);
each as process CPU time and wall time, best of --repeats interleaved runs; then the peak RSS (ru_maxrss) of a
fresh process collecting N and 4N clips. CPU time with one torch thread (default) is the stable figure on a
shared machine: wall time there mostly measures the other processes.

    .venv/bin/python benchmarks/collect.py [--models cnn ast_tiny] [--n 256] [--batch-size 32] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SR = 16000
REPO = Path(__file__).resolve().parents[1]


def build(model: str):
    """Adapter by name, random weights (seeded), in eval mode."""
    torch.manual_seed(0)
    if model == "cnn":
        from and_lightning.models.cnn import SmallCNN

        return SmallCNN(num_classes=10).eval()
    if model == "ast_tiny":
        import hydra
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(REPO / "conf" / "model" / "ast_tiny.yaml")
        cfg.num_classes = 10
        del cfg["name"]
        return hydra.utils.instantiate(cfg).eval()
    raise ValueError(f"unknown model '{model}' (cnn | ast_tiny)")


def write_clips(folder: Path, n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = folder / f"clip{i:05d}.wav"
        if not path.exists():
            sf.write(path, (rng.standard_normal(SR) * 0.1).astype(np.float32), SR, subtype="PCM_16")
        rows.append({"clip_id": f"clip{i:05d}", "path": str(path), "label": i % 10, "fold": 1})
    return rows


def records(rows: list[dict]):
    from and_lightning.data.clips import ClipRecord

    return [ClipRecord(**r) for r in rows]


def bare_loop(adapter, recs, batch_size: int, from_files: bool) -> tuple[float, float]:
    """(cpu, wall) seconds of the bare forward loop."""
    from torch.utils.data import DataLoader

    from and_lightning.data.clips import ClipDataset

    loader = DataLoader(ClipDataset(recs, SR, 1.0), batch_size=batch_size)
    batches = None if from_files else [b["audio"] for b in loader]
    cpu, wall = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        for batch in loader if from_files else batches:
            adapter(batch["audio"] if from_files else batch)
    return time.process_time() - cpu, time.perf_counter() - wall


def collection(adapter, recs, batch_size: int, root: Path) -> tuple[float, float]:
    """(cpu, wall) seconds of the whole collection stage."""
    from and_lightning.stages.collect import collect_activations

    cpu, wall = time.process_time(), time.perf_counter()
    collect_activations(adapter, recs, None, 1.0, list(adapter.layer_paths()), "mean", root,
                        batch_size=batch_size, progress=False)
    return time.process_time() - cpu, time.perf_counter() - wall


def rss_child(model: str, listing: Path, n: int, batch_size: int, threads: int) -> None:
    """Run one collection in this (fresh) process and print its peak RSS in MiB as JSON."""
    torch.set_num_threads(threads)
    adapter = build(model)
    recs = records(json.loads(listing.read_text())[:n])
    with tempfile.TemporaryDirectory() as tmp:
        collection(adapter, recs, batch_size, Path(tmp))
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_rss(model: str, listing: Path, n: int, batch_size: int, threads: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--rss-child", model, "--listing", str(listing), "--n", str(n),
                          "--batch-size", str(batch_size), "--threads", str(threads)],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cnn", "ast_tiny"])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--rss-child")
    ap.add_argument("--listing", type=Path)
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child, args.listing, args.n, args.batch_size, args.threads)
    import logging
    import warnings

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from and_lightning.stages.collect import collect_activations  # noqa: F401 (import time is not measured)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = write_clips(tmp / "clips", 4 * args.n)
        listing = tmp / "clips.json"
        listing.write_text(json.dumps(rows))
        recs = records(rows[: args.n])
        print(f"torch threads: {torch.get_num_threads()}, N = {args.n} clips of 1 s at {SR} Hz, "
              f"batch size {args.batch_size}, all layers, reduction mean")
        for model in args.models:
            adapter = build(model)
            width = sum(adapter.layers().values())
            bare_loop(adapter, recs[: args.batch_size], args.batch_size, True)  # warm-up
            collection(adapter, recs[: args.batch_size], args.batch_size, tmp / f"warm-{model}")
            runs = {"mem": [], "files": [], "full": []}
            for i in range(args.repeats):
                runs["mem"].append(bare_loop(adapter, recs, args.batch_size, False))
                runs["files"].append(bare_loop(adapter, recs, args.batch_size, True))
                runs["full"].append(collection(adapter, recs, args.batch_size, tmp / f"store-{model}-{i}"))
            best = {k: (min(c for c, _ in v), min(w for _, w in v)) for k, v in runs.items()}
            print(f"\n[{model}] {len(adapter.layers())} layers, {width} units        CPU s    wall s")
            for key, label in (("mem", "(a) bare model(x) loop, tensors in memory"),
                               ("files", "(a) bare model(x) loop, same DataLoader  "),
                               ("full", "(b) full collection stage                ")):
                print(f"  {label}  {best[key][0]:7.3f}  {best[key][1]:7.3f}")
            for key, label in (("files", "vs the same-DataLoader loop"), ("mem", "vs the in-memory loop     ")):
                print(f"  (c) ratio b/a {label}  {best['full'][0] / best[key][0]:7.3f}  "
                      f"{best['full'][1] / best[key][1]:7.3f}")
            small, large = (peak_rss(model, listing, n, args.batch_size, args.threads) for n in (args.n, 4 * args.n))
            print(f"  peak RSS: {small:.1f} MiB for N={args.n}, {large:.1f} MiB for 4N={4 * args.n} "
                  f"(4N/N = {large / small:.3f})")


if __name__ == "__main__":
    main()
