"""Neurons vs SAE features of the same layer on the same clips (issue 16): one table per run.

    python experiments/sae/sae_vs_neurons.py 'layers=[conv4]' sae=topk [+erase_units=3]

Runs (or reuses: every stage is cached) `dissect` with the given overrides, then erases, per class, the
`erase_units` neurons and the `erase_units` SAE features that name the class best (and as many random ones), and
writes `sae_vs_neurons.csv` / `.md` in the run directory: ground-truth F1, simulation, detection, uninterpretable share,
polysemanticity, SAE reconstruction metrics and concept erasure, one row per layer.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from and_lightning.cli import check_config, run_cli  # noqa: E402

METRICS = [("gt_f1_closed", "eval/gt/closed_concept/{}/f1"), ("gt_f1_closed_shuffled", "eval/gt/closed_concept/{}/f1_shuffled"),
           ("gt_f1_description", "eval/gt/description/{}/f1"), ("no_true_attribute", "eval/gt/description/{}/no_separable"),
           ("sim_pearson", "eval/sim/{}/pearson"), ("sim_pearson_shuffled", "eval/sim/{}/pearson_shuffled"),
           ("det_auprc", "eval/det/{}/auprc"), ("det_auprc_shuffled", "eval/det/{}/auprc_shuffled"),
           ("uninterpretable_k3", "eval/interp/{}/uninterpretable_k3"),
           ("uninterpretable_k5", "eval/interp/{}/uninterpretable_k5"),
           ("distinct_classes_top5", "eval/poly/{}/distinct_classes"),
           ("distinct_classes_random5", "eval/poly/{}/distinct_classes_random"),
           ("single_class", "eval/poly/{}/single_class"), ("constant_units", "eval/poly/{}/constant")]


@hydra.main(version_base="1.3", config_path="../../conf", config_name="dissect")
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    from and_lightning.analysis.tables import write_table
    from and_lightning.checkpoints import build
    from and_lightning.dissection import dissect, load_target
    from and_lightning.models.registry import resolve_layers
    from and_lightning.sae.erasure import erasure_table
    from and_lightning.sae.fit import check_sae_layers, splice_saes
    from and_lightning.stages.describe import read_descriptions
    from and_lightning.store.activations import ActivationStore

    n = int(cfg.get("erase_units", 3))
    with open_dict(cfg):
        cfg.pop("erase_units", None)
    if not cfg.get("sae"):
        raise ValueError("sae: set sae=topk or sae=batchtopk to compare neurons with SAE features")
    result = dissect(cfg)
    adapter, class_names = load_target(cfg)
    data = build(cfg.data)
    class_names = class_names or data.class_names
    records = data.index.folds(cfg.data.predict_folds)
    spliced, layers, _ = splice_saes(cfg, adapter, ActivationStore.open(result["neuron_store"]).manifest["key"],
                                     resolve_layers(adapter, check_sae_layers(cfg.layers)), records,
                                     data.sample_rate, data.clip_seconds)
    held_out = data.index.folds(list(cfg.data.test_folds))
    erasure = {(r["layer"], r["selection"]): r for r in erasure_table(
        spliced, read_descriptions(Path(result["descriptions"])), held_out, class_names, layers, n,
        data.clip_seconds, cfg.data.batch_size, cfg.seed)}
    m, rows = result["metrics"], []
    for layer in layers:
        host = layer.removesuffix(".sae")
        row = {"layer": layer, "sae": cfg.sae.kind if layer.endswith(".sae") else "", "units": spliced.layers()[layer]}
        row.update({name: m.get(key.format(layer)) for name, key in METRICS})
        if layer.endswith(".sae"):
            row.update({k: m.get(f"sae/{k}/{host}") for k in ("fvu", "l0", "dead_fraction")})
        for sel in ("described", "random"):
            e = erasure[(layer, sel)]
            row[f"erase_{sel}_selectivity"] = e["selectivity_prob"]
            row[f"erase_{sel}_delta_A"] = e["delta_A_prob"]
        row["erase_units_per_class"] = erasure[(layer, "described")]["units_per_class"]
        row["erase_classes"] = erasure[(layer, "described")]["classes"]
        rows.append(row)
    columns = list(rows[0]) + [c for c in ("fvu", "l0", "dead_fraction") if c not in rows[0]]
    written = write_table(rows, columns, Path(cfg.paths.output_dir) / "sae_vs_neurons",
                          f"Neurons vs SAE features ({cfg.sae.kind}, {n} units erased per class)")
    print(Path(written["md"]).read_text(encoding="utf-8"))


if __name__ == "__main__":
    run_cli(main)
