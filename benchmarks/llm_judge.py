"""Detection with the LLM judge on a few units of a finished dissection: its own descriptions, captions and held-out
split (the split file in the dissection folder), judged by the LLM of `conf/llm/<--llm>.yaml` (e.g. smollm2, the
real small model) and, for comparison, by the offline text judge, each against the same units' descriptions
shuffled among them. A dissection's LLM is part of its key, so `dissect.py llm=smollm2` would also re-describe every
unit with SmolLM2; this scores the rule-based descriptions with SmolLM2 as the judge only. Prints AUPRC, F1 and
seconds per unit (wall, and CPU of this process: the machine may be shared).

    AND_ROOT=<root> .venv/bin/python benchmarks/llm_judge.py <run dir>/dissection.json --llm smollm2 --units 6
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dissection", type=Path, help="dissection.json of a run (names its store and dissection folder)")
    p.add_argument("--llm", default="smollm2", help="a config of conf/llm/")
    p.add_argument("--layer", default=None, help="default: the last layer of the store")
    p.add_argument("--units", type=int, default=6, help="units scored, a seeded draw from the layer")
    p.add_argument("--chunk", type=int, default=8, help="clips per LLM request (evaluate.detection.llm_chunk)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from hydra import compose, initialize_config_dir

    from and_lightning.analysis.detection import detection_report
    from and_lightning.analysis.split import held_out_split
    from and_lightning.describe.llm.factory import build_llm
    from and_lightning.describe.text_encoder import MiniLMEncoder
    from and_lightning.stages.caption import read_captions
    from and_lightning.stages.describe import read_descriptions
    from and_lightning.store.activations import ActivationStore

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("dissect", overrides=[f"llm={a.llm}"])
    written = json.loads(a.dissection.read_text())
    store, folder = ActivationStore.open(written["store"]), Path(written["dissection_dir"])
    layer = a.layer or list(store.layers)[-1]
    records = [r for r in read_descriptions(folder / "descriptions.jsonl") if r["layer"] == layer]
    chosen = set(np.random.default_rng(a.seed).choice(len(records), min(a.units, len(records)), replace=False).tolist())
    records = [r for i, r in enumerate(records) if i in chosen]
    captions = read_captions(folder / "captions.jsonl")
    split, _, seed, exclude = held_out_split(folder, store.clip_ids, cfg.evaluate.split)
    d = cfg.evaluate.detection
    common = dict(field=d.field, positive_fraction=d.positive_fraction, quantiles=d.quantiles,
                  per_quantile=d.per_quantile, negatives=d.negatives, seed=seed, exclude_described=exclude)
    acts = {layer: store.acts(layer)}
    print(f"{layer}: units {sorted(r['unit'] for r in records)}", flush=True)
    for judge in ("text", "llm"):
        llm = build_llm(cfg.llm) if judge == "llm" else None
        encoder = MiniLMEncoder() if judge == "text" else None
        wall, cpu = time.perf_counter(), time.process_time()
        (row,), _, _ = detection_report(records, acts, store.clip_ids, captions, split, encoder, llm=llm,
                                        llm_chunk=a.chunk,
                                        shuffles=d.shuffles, calibration_clips=d.calibration_clips, **common)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{judge} judge ({a.llm if llm else 'MiniLM'}): AUPRC {row['auprc']:.3f} vs shuffled "
              f"{row['auprc_shuffled']:.3f}, F1 {row['f1']:.3f} vs {row['f1_shuffled']:.3f}, scored "
              f"{row['scored']}/{row['neurons']}; {wall / len(records):.1f} s per unit wall, "
              f"{cpu / len(records):.1f} s CPU" + (f"; requests {llm.stats.as_dict()}" if llm else ""), flush=True)


if __name__ == "__main__":
    main()
