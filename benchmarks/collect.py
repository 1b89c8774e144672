"""Benchmark stage 1: collection overhead over a bare forward loop, and peak memory for N vs 4N clips.

For each model (all its layers, batch size 32, random 1 s clips at 16 kHz written as 16-bit WAV):
  (a) seconds for `model(x)` over the clips under torch.inference_mode, twice: on tensors already in memory,
      and fed by the same DataLoader (ClipDataset reading the files) the collection uses;
  (b) seconds for the whole collection stage (`collect_activations` into a fresh store: hashing, Lightning
      predict loop with hooks, writer, shards, assembly);
  (c) the ratio b / a for both kinds of (a): median over --repeats interleaved runs of the ratio within a run
      (robust to the machine's drift), and the ratio of the best runs;
times are process CPU time and wall time, best of --repeats runs; then the peak RSS (ru_maxrss) of a
fresh process collecting N and 4N clips (peak mark reset after imports, see `rss_child`). CPU time with one
torch thread (default) is the stable figure on a shared machine: wall time there mostly measures the others.

    .venv/bin/python benchmarks/collect.py [--models cnn ast_tiny ast_wide] [--n 512] [--batch-size 32]
                                           [--repeats 5] [--threads 1]
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


# ast_wide: ast_tiny with wider layers (9,226 units), so that holding the activation matrix in memory would
# show in the peak RSS of the 4N run (the tiny models' matrices are a few MB beside ~0.9 GB of libraries).
AST_WIDE = {"hidden_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1536}


def build(model: str):
    """Adapter by name (cnn | ast_tiny | ast_wide), random weights (seeded), in eval mode."""
    torch.manual_seed(0)
    if model == "cnn":
        from and_lightning.models.cnn import SmallCNN

        return SmallCNN(num_classes=10).eval()
    if model in ("ast_tiny", "ast_wide"):
        import hydra
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(REPO / "conf" / "model" / "ast_tiny.yaml")
        cfg.num_classes = 10
        del cfg["name"]
        if model == "ast_wide":
            cfg.config = AST_WIDE
        return hydra.utils.instantiate(cfg).eval()
    raise ValueError(f"unknown model '{model}' (cnn | ast_tiny | ast_wide)")


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


def collection(adapter, recs, batch_size: int, root: Path, peak_times: bool = False) -> tuple[float, float]:
    """(cpu, wall) seconds of the whole collection stage (with each unit's peak frame time: `peak_times`)."""
    from and_lightning.stages.collect import collect_activations

    cpu, wall = time.process_time(), time.perf_counter()
    collect_activations(adapter, recs, None, 1.0, list(adapter.layer_paths()), "mean", root,
                        batch_size=batch_size, progress=False, peak_times=peak_times)
    return time.process_time() - cpu, time.perf_counter() - wall


def rss_child(model: str, listing: Path, n: int, batch_size: int, threads: int, peak_times: bool = False) -> None:
    """In this (fresh) process: import, build the model, reset the peak-RSS mark, collect n clips; print JSON with
    the resident set before collecting and ru_maxrss after (MiB). The reset (Linux /proc/self/clear_refs) keeps
    the transient peak of importing the libraries out of the figure, so the peak is the collection's."""
    from and_lightning.stages.collect import collect_activations  # noqa: F401 (imported before the reset)

    torch.set_num_threads(threads)
    adapter = build(model)
    recs = records(json.loads(listing.read_text())[:n])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size to the current one
    with open("/proc/self/status") as f:
        before = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
    with tempfile.TemporaryDirectory() as tmp:
        collection(adapter, recs, batch_size, Path(tmp), peak_times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"before_mib": before, "peak_mib": peak}))


def peak_rss(model: str, listing: Path, n: int, batch_size: int, threads: int,
             peak_times: bool = False) -> dict[str, float]:
    """Peak RSS of a fresh process collecting n clips (`rss_child`; `peak_times`: frame-level collection)."""
    out = subprocess.run([sys.executable, __file__, "--rss-child", model, "--listing", str(listing), "--n", str(n),
                          "--batch-size", str(batch_size), "--threads", str(threads),
                          *(["--peak-times"] if peak_times else [])],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cnn", "ast_tiny", "ast_wide"])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--rss-child")
    ap.add_argument("--listing", type=Path)
    ap.add_argument("--peak-times", action="store_true", help=argparse.SUPPRESS)  # rss child: frame-level
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child, args.listing, args.n, args.batch_size, args.threads, args.peak_times)
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
            print(f"\n[{model}] {len(adapter.layers())} layers, {width} units        CPU s    wall s   (best run)")
            for key, label in (("mem", "(a) bare model(x) loop, tensors in memory"),
                               ("files", "(a) bare model(x) loop, same DataLoader  "),
                               ("full", "(b) full collection stage                ")):
                print(f"  {label}  {best[key][0]:7.3f}  {best[key][1]:7.3f}")
            for key, label in (("files", "vs the same-DataLoader loop"), ("mem", "vs the in-memory loop     ")):
                paired = [(np.median([f[j] / a[j] for f, a in zip(runs["full"], runs[key])])) for j in (0, 1)]
                print(f"  (c) ratio b/a {label}  {paired[0]:7.3f}  {paired[1]:7.3f}   (median of paired runs; "
                      f"best/best {best['full'][0] / best[key][0]:.3f})")
            small, large = (peak_rss(model, listing, n, args.batch_size, args.threads) for n in (args.n, 4 * args.n))
            print(f"  peak RSS (ru_maxrss): {small['peak_mib']:.1f} MiB for N={args.n}, {large['peak_mib']:.1f} MiB "
                  f"for 4N={4 * args.n}: 4N/N = {large['peak_mib'] / small['peak_mib']:.3f}")
            print(f"    above the RSS before collecting: +{small['peak_mib'] - small['before_mib']:.1f} MiB (N), "
                  f"+{large['peak_mib'] - large['before_mib']:.1f} MiB (4N); the 4N store's two float32 matrices "
                  f"(values, tie-break statistic) would take {4 * args.n * width * 8 / 2**20:.0f} MiB")

if __name__ == "__main__":
    main()
