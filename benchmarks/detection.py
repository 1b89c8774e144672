"""Benchmark the detection scorer: one layer of 256 units scored on 300 held-out clips with the offline text judge
(MiniLM, threshold calibrated on 300 explain clips, 5 shuffled-description baselines). Clips carry 3 of 12
acoustic words in their captions; unit u responds to word u % 12 and is described by it. Prints seconds (time to
embed the texts included; the encoder is loaded before the clock starts). Target: < 60 s on 2 cores.

    .venv/bin/python benchmarks/detection.py [--units 256] [--clips 300] [--shuffles 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

WORDS = ["loud", "quiet", "high-pitched", "low-pitched", "noisy", "tonal", "pulsing", "steady", "bright", "dark",
         "rising", "falling"]


def planted_layer(units: int, clips: int, seed: int = 0):
    """(clip ids, captions, activations [2 * clips, units], records): half the clips explain, half are scored."""
    rng = np.random.default_rng(seed)
    n = 2 * clips
    has = np.zeros((n, len(WORDS)), bool)
    for i in range(n):
        has[i, rng.choice(len(WORDS), 3, replace=False)] = True
    ids = [f"c{i}" for i in range(n)]
    captions = {c: "a " + " and ".join(w for w, h in zip(WORDS, row) if h) + " sound" for c, row in zip(ids, has)}
    acts = has[:, np.arange(units) % len(WORDS)] + rng.normal(0, 0.5, (n, units))
    records = []
    for u in range(units):
        order = np.argsort(-acts[:, u])
        records.append({"layer": "L", "unit": u, "description": f"{WORDS[u % len(WORDS)]} sounds",
                        "top_clips": [ids[i] for i in order[:5]], "bottom_clips": [ids[i] for i in order[-5:]]})
    return ids, captions, acts, records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", type=int, default=256)
    p.add_argument("--clips", type=int, default=300)
    p.add_argument("--shuffles", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from and_lightning.analysis.detection import detection_report
    from and_lightning.analysis.split import make_split
    from and_lightning.describe.text_encoder import MiniLMEncoder

    ids, captions, acts, records = planted_layer(a.units, a.clips)
    split = make_split(ids, 0.5, seed=0)
    encoder = MiniLMEncoder()
    start = time.perf_counter()
    (row,), _, _ = detection_report(records, {"L": acts}, ids, captions, split, encoder, shuffles=a.shuffles, seed=0)
    seconds = time.perf_counter() - start
    print(f"detection, text judge: {a.units} units x {len(split['score'])} held-out clips, {a.shuffles} shuffles: "
          f"{seconds:.1f} s ({1000 * seconds / a.units:.1f} ms per unit); AUPRC {row['auprc']:.3f} vs shuffled "
          f"{row['auprc_shuffled']:.3f}")


if __name__ == "__main__":
    main()
