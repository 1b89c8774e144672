"""Benchmark: peak memory of frame-level collection (exemplars=window: each unit's peak frame time per clip
recorded beside its activation) for N and 4N clips; the target is < 10 % growth (4N/N < 1.10).

Each figure is the peak RSS (ru_maxrss) of a fresh process that builds the model (all its layers, random seeded
weights), resets the peak mark after the imports and collects the clips (random 1 s clips at 16 kHz, 16-bit WAV)
with `peak_times=True` into a fresh store (`benchmarks/collect.py`'s RSS child). The probe keeps one peak time
per (clip, unit): a batch's frames are reduced as they arrive, and rows go to disk shard by shard.

    .venv/bin/python benchmarks/frame_rss.py [--models cnn ast_tiny] [--n 512] [--batch-size 32] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from collect import peak_rss, write_clips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cnn", "ast_tiny"])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "clips.json"
        listing.write_text(json.dumps(write_clips(Path(tmp) / "clips", 4 * args.n)))
        for model in args.models:
            small, large = (peak_rss(model, listing, n, args.batch_size, args.threads, peak_times=True)
                            for n in (args.n, 4 * args.n))
            ratio = large["peak_mib"] / small["peak_mib"]
            print(f"{model}: peak RSS with peak times {small['peak_mib']:.1f} MiB for N={args.n}, "
                  f"{large['peak_mib']:.1f} MiB for 4N={4 * args.n}: 4N/N = {ratio:.3f} "
                  f"({'meets' if ratio < 1.10 else 'misses'} the < 1.10 target); above the RSS before collecting: "
                  f"+{small['peak_mib'] - small['before_mib']:.1f} / "
                  f"+{large['peak_mib'] - large['before_mib']:.1f} MiB",
                  flush=True)


if __name__ == "__main__":
    main()
