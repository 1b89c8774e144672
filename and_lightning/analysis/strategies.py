"""Compare training strategies (scratch / frozen SSL + linear head / SSL fine-tuned) over seeds from each job's
`study_result.json`: per-layer and per-strategy tables, two plots, a finding paragraph checked against the paper's
§9.4/§9.5 pattern, and a W&B run in the sweep's group (`analysis.sweep`; its `AggregateCallback` runs `aggregate`
when a Hydra multirun ends).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from and_lightning.analysis.plots import save_png
from and_lightning.analysis.sweep import Table, by_key, mean, number, publish, read_results, sd
from and_lightning.analysis.tables import markdown_table

RESULT_FILE = "study_result.json"
RESULT_FIELDS = {"strategy": object, "seed": object, "layers": list, "metrics": dict}  # for sweep.read_results
LAYERS_PNG = "strategies_layers.png"
ACCURACY_PNG = "strategies_accuracy.png"
ALPHA = 0.05
# a fall of the uninterpretable share counts from 10 percentage points: the paper's supervised models drop by
# 30-40 points, its frozen SSL backbone moves by 2-5 (spec §9.5)
FALL_MIN = 0.10
SUPERVISED = ("scratch", "ssl_finetune")  # the paper's pattern: these narrow with depth
SELF_SUPERVISED = "ssl"  # ... and the frozen self-supervised backbone stays flat
# per-layer quantity -> metric key template ({layer}, {k} = K')
LAYER_METRICS = {
    "uninterpretable": "eval/interp/{layer}/uninterpretable_k{k}",
    "mean_adjectives": "eval/interp/{layer}/mean_adjectives",
    "gt_f1": "eval/gt/description/{layer}/f1",
    "gt_f1_shuffled": "eval/gt/description/{layer}/f1_shuffled",
    "sim_pearson": "eval/sim/{layer}/pearson",
    "sim_pearson_shuffled": "eval/sim/{layer}/pearson_shuffled",
}
WITH_SD = ("uninterpretable", "mean_adjectives", "gt_f1", "sim_pearson")
LAYER_COLUMNS = ["strategy", "layer", "depth", "seeds", "uninterpretable", "uninterpretable_sd", "mean_adjectives",
                 "mean_adjectives_sd", "gt_f1", "gt_f1_sd", "gt_f1_shuffled", "sim_pearson", "sim_pearson_sd",
                 "sim_pearson_shuffled"]
SUMMARY_COLUMNS = ["strategy", "seeds", "test_acc", "test_acc_sd", "last_layer_top1", "last_layer_top1_sd",
                   "adj_slope", "adj_slope_sd", "adj_slope_p_max", "slope_tested_seeds", "slope_negative_seeds",
                   "slope_significant_seeds",
                   "hidden_layers", "first_hidden", "last_hidden", "uninterpretable", "uninterpretable_first",
                   "uninterpretable_last_hidden", "gt_f1", "sim_pearson"]


def _layers(results: Sequence[dict]) -> list[str]:
    """The layers of one strategy's jobs in depth order (first job's order; layers only later jobs have go last)."""
    layers: list[str] = []
    for r in results:
        layers += [str(name) for name in r["layers"] if str(name) not in layers]
    return layers


def layer_rows(results: Sequence[dict], k_prime: int = 4) -> list[dict[str, Any]]:
    """One row per (strategy, layer): seed mean (and sample sd over seeds) of each per-layer metric; the
    uninterpretable share uses K' = `k_prime`. Strategies in first-seen order, layers in depth order."""
    rows = []
    for strategy, rs in by_key(results, "strategy").items():
        for depth, layer in enumerate(_layers(rs), start=1):
            seeds = [r for r in rs if layer in map(str, r["layers"])]
            row: dict[str, Any] = {"strategy": strategy, "layer": layer, "depth": depth, "seeds": len(seeds)}
            for name, template in LAYER_METRICS.items():
                values = [number(r["metrics"], template.format(layer=layer, k=k_prime)) for r in seeds]
                row[name] = mean(values)
                if name in WITH_SD:
                    row[f"{name}_sd"] = sd(values)
            rows.append({c: row[c] for c in LAYER_COLUMNS})
    return rows


def summary_rows(results: Sequence[dict], k_prime: int = 4) -> list[dict[str, Any]]:
    """One row per strategy: accuracy and adjective slope over seeds, and over the hidden layers (all but the
    last, the head) the mean of the per-layer seed means, plus the first and last hidden layer's uninterpretable
    share. `adj_slope_p_max` is NaN when any seed lacks a p-value, so "< 0.05" means "every seed at 5 %"."""
    layers_by_strategy = by_key(layer_rows(results, k_prime), "strategy")
    out = []
    for strategy, rs in by_key(results, "strategy").items():
        def metric(key: str, rs: list[dict] = rs) -> list[float]:
            return [number(r["metrics"], key) for r in rs]

        slopes, ps = metric("eval/interp/adj_slope"), metric("eval/interp/adj_slope_p")
        hidden = layers_by_strategy[strategy][:-1]
        row = {
            "strategy": strategy, "seeds": len(rs),
            "test_acc": mean(metric("test/acc")), "test_acc_sd": sd(metric("test/acc")),
            "last_layer_top1": mean(metric("dissect/last_layer_top1")),
            "last_layer_top1_sd": sd(metric("dissect/last_layer_top1")),
            "adj_slope": mean(slopes), "adj_slope_sd": sd(slopes),
            "adj_slope_p_max": float(np.max(ps)) if ps else math.nan,
            "slope_tested_seeds": sum(1 for s, p in zip(slopes, ps) if math.isfinite(s) and math.isfinite(p)),
            "slope_negative_seeds": sum(1 for s, p in zip(slopes, ps) if s < 0 and p < ALPHA),
            "slope_significant_seeds": sum(1 for p in ps if p < ALPHA),
            "hidden_layers": len(hidden),
            "first_hidden": hidden[0]["layer"] if hidden else "",
            "last_hidden": hidden[-1]["layer"] if hidden else "",
            "uninterpretable": mean([h["uninterpretable"] for h in hidden]),
            "uninterpretable_first": hidden[0]["uninterpretable"] if hidden else math.nan,
            "uninterpretable_last_hidden": hidden[-1]["uninterpretable"] if hidden else math.nan,
            "gt_f1": mean([h["gt_f1"] for h in hidden]),
            "sim_pearson": mean([h["sim_pearson"] for h in hidden]),
        }
        out.append(row)
    return out


def _slope_state(row: dict) -> str:
    """"all" / "some" / "none": in how many seeds adjectives per neuron fall significantly with depth."""
    if row["seeds"] and row["slope_negative_seeds"] == row["seeds"]:
        return "all"
    return "some" if row["slope_negative_seeds"] else "none"


def _uninterp_falls(row: dict) -> bool | None:
    """Whether the uninterpretable share falls by at least FALL_MIN from the first to the last hidden layer
    (None: unknown)."""
    first, last = row["uninterpretable_first"], row["uninterpretable_last_hidden"]
    if row["hidden_layers"] < 2 or not (math.isfinite(first) and math.isfinite(last)):
        return None
    return last <= first - FALL_MIN


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _describe(row: dict) -> str:
    n = row["seeds"]
    state = _slope_state(row)
    if state == "all":
        slope = (f"adjectives per neuron fall with depth in every seed (mean slope {row['adj_slope']:.3f}, "
                 f"largest p {row['adj_slope_p_max']:.2g})")
    elif state == "some":
        slope = (f"adjectives per neuron fall significantly with depth in {row['slope_negative_seeds']} of {n} "
                 f"seeds (mean slope {row['adj_slope']:.3f})")
    elif not row["slope_tested_seeds"]:
        slope = "no adjective slope with a p-value was measured"
    else:
        rising = row["slope_significant_seeds"]
        slope = (f"adjectives per neuron do not fall significantly with depth in any seed (mean slope "
                 f"{row['adj_slope']:.3f}" + (f"; a significant rise in {rising} of {n} seeds)" if rising else ")"))
    if 0 < row["slope_tested_seeds"] < n:
        slope += f" (slope or p-value missing for {n - row['slope_tested_seeds']} of {n} seeds)"
    first, last = row["uninterpretable_first"], row["uninterpretable_last_hidden"]
    if _uninterp_falls(row) is None:
        why = "fewer than two hidden layers" if row["hidden_layers"] < 2 else "not measured"
        uninterp = f"the uninterpretable share cannot be compared across hidden layers ({why})"
    else:
        uninterp = (f"the uninterpretable share goes from {_pct(first)} in {row['first_hidden']} to {_pct(last)} "
                    f"in {row['last_hidden']}")
    return f"`{row['strategy']}` ({n} seed{'s' if n != 1 else ''}): {slope}; {uninterp}."


def _grade(row: dict) -> tuple[str, str]:
    """("full" / "partial" / "none", why): how far one strategy shows the paper's pattern for its kind.
    Supervised: adjectives per neuron fall significantly in every seed and the uninterpretable share falls.
    Self-supervised (frozen): no significant adjective slope in any seed (all tested) and no such fall."""
    n, falls = row["seeds"], _uninterp_falls(row)
    share = {True: f"uninterpretable share falls by >= {100 * FALL_MIN:.0f} points",
             False: f"uninterpretable share does not fall by {100 * FALL_MIN:.0f} points",
             None: "uninterpretable share not compared"}[falls]
    if row["strategy"] == SELF_SUPERVISED:
        sig, untested = row["slope_significant_seeds"], n - row["slope_tested_seeds"]
        slope = f"a significant adjective slope in {sig} of {n} seeds" + (f", {untested} untested" if untested else "")
        flat_slope, flat_share = sig == 0 and untested == 0, falls is False
        grade = "full" if flat_slope and flat_share else "none" if sig == n and falls else "partial"
    else:
        state = _slope_state(row)
        slope = f"a significantly negative adjective slope in {row['slope_negative_seeds']} of {n} seeds"
        grade = "full" if state == "all" and falls else "none" if state == "none" and not falls else "partial"
    return grade, f"{slope}; {share}"


VERDICT_WORDS = {True: {"full": "narrows with depth", "partial": "narrows only partly", "none": "does not narrow"},
                 False: {"full": "stays flat", "partial": "is only partly flat", "none": "is not flat"}}


def finding_text(summary: Sequence[dict], k_prime: int | None = None) -> str:
    """A short paragraph stating, from the numbers only, what each strategy shows and whether the paper's
    pattern (supervised strategies narrow with depth, the frozen SSL backbone stays flat) is reproduced."""
    share = f"uninterpretable share (K' = {k_prime})" if k_prime is not None else "uninterpretable share"
    sentences = [_describe(r).replace("uninterpretable share", share, 1) for r in summary]
    rows = {r["strategy"]: r for r in summary}
    judged = (*SUPERVISED, SELF_SUPERVISED)
    missing = [s for s in judged if s not in rows]
    if missing:
        verdict = (f"Verdict: whether the paper's pattern is reproduced cannot be judged: it needs "
                   f"{', '.join(f'`{s}`' for s in missing)}, which this sweep does not have.")
    else:
        graded = {s: _grade(rows[s]) for s in judged}
        grades = {s: g for s, (g, _) in graded.items()}
        if all(g == "full" for g in grades.values()):
            word = "reproduced"
        elif all(grades[s] == "none" for s in SUPERVISED):
            word = "not reproduced"
        else:
            word = "partly reproduced"
        parts = [f"`{s}` {VERDICT_WORDS[s in SUPERVISED][g]} ({why})" for s, (g, why) in graded.items()]
        verdict = (f"Verdict: the paper's pattern (supervised training narrows neurons with depth, the frozen "
                   f"self-supervised backbone stays flat) is {word}: {'; '.join(parts)}.")
    return " ".join(sentences + [verdict])


def _depth_labels(rows: Sequence[dict]) -> list[str]:
    labels: dict[int, list[str]] = {}
    for r in rows:
        names = labels.setdefault(r["depth"], [])
        if r["layer"] not in names:
            names.append(r["layer"])
    return ["/".join(labels[d]) for d in sorted(labels)]


def layers_chart(rows: Sequence[dict], path: str | os.PathLike, k_prime: int = 4) -> str:
    """2x2 panels vs layer depth, one line per strategy with seed-sd error bars (dashed: shuffled baseline)."""
    panels = [("uninterpretable", None, f"uninterpretable neurons (%), K' = {k_prime}", 100.0),
              ("mean_adjectives", None, "adjectives per neuron", 1.0),
              ("gt_f1", "gt_f1_shuffled", "ground-truth F1 (dashed: shuffled)", 1.0),
              ("sim_pearson", "sim_pearson_shuffled", "simulation Pearson r (dashed: shuffled)", 1.0)]
    labels = _depth_labels(rows)
    fig = Figure(figsize=(max(9.0, 1.2 * len(labels) + 5), 7.5))
    axes = fig.subplots(2, 2)
    colors = [f"C{i}" for i in range(10)]
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    for ax, (key, shuffled, title, scale) in zip(axes.flat, panels):
        for i, strategy in enumerate(strategies):
            rs = [r for r in rows if r["strategy"] == strategy]
            x = np.array([r["depth"] for r in rs], dtype=float) + 0.05 * (i - (len(strategies) - 1) / 2)  # dodge
            y = np.array([r[key] for r in rs], dtype=float) * scale
            err = np.nan_to_num(np.array([r[f"{key}_sd"] for r in rs], dtype=float) * scale)
            color = colors[i % len(colors)]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=color, label=strategy)
            if shuffled:
                ax.plot(x, np.array([r[shuffled] for r in rs], dtype=float) * scale, "--", color=color, alpha=0.7)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(np.arange(1, len(labels) + 1), labels, rotation=45)
        ax.set_xlabel("layer (depth order; last = head)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("training strategies: interpretability vs depth (mean ± sd over seeds)")
    fig.tight_layout()
    return save_png(fig, path, dpi=100)


def accuracy_chart(summary: Sequence[dict], path: str | os.PathLike) -> str:
    """Grouped bars per strategy: test accuracy and last-layer dissection top-1, with seed-sd error bars."""
    x = np.arange(len(summary))
    fig = Figure(figsize=(max(5.0, 1.4 * len(summary) + 2), 4.0))
    ax = fig.add_subplot()
    top = 1.0
    for offset, key, label in ((-0.2, "test_acc", "test accuracy"), (0.2, "last_layer_top1", "last-layer top-1")):
        values = np.array([r[key] for r in summary], dtype=float)  # NaN: no bar (not a bar at 0)
        err = np.nan_to_num(np.array([r[f"{key}_sd"] for r in summary], dtype=float))
        ax.bar(x + offset, values, 0.4, yerr=err, capsize=4, label=label)
        top = max([top, *(values + err)[np.isfinite(values)]])
    ax.set_xticks(x, [r["strategy"] for r in summary])
    ax.set_ylim(0, top + 0.05)
    ax.set_ylabel("fraction (mean ± sd over seeds)")
    ax.set_title("accuracy and last-layer dissection per training strategy")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_png(fig, path, dpi=100)


# the markdown shows "mean ± sd" in one cell; the csv keeps every column
SUMMARY_VIEW = {"seeds": "seeds", "test_acc": "test acc", "last_layer_top1": "last-layer top-1",
                "adj_slope": "adjectives/neuron slope per layer", "adj_slope_p_max": "slope p (max over seeds)",
                "slope_negative_seeds": "seeds with slope < 0, p < 0.05", "uninterpretable_first": "uninterp. first hidden",
                "uninterpretable_last_hidden": "uninterp. last hidden", "uninterpretable": "uninterp. hidden mean",
                "gt_f1": "GT F1 hidden", "sim_pearson": "simulation r hidden"}
LAYERS_VIEW = {"layer": "layer", "seeds": "seeds", "uninterpretable": "uninterpretable",
               "mean_adjectives": "adjectives/neuron", "gt_f1": "GT F1", "gt_f1_shuffled": "GT F1 shuffled",
               "sim_pearson": "simulation r", "sim_pearson_shuffled": "simulation r shuffled"}


def _view(row: dict, columns: dict[str, str]) -> dict[str, Any]:
    """A row for people: `x ± x_sd` where an sd exists, p-values to 2 significant digits (not 0.000)."""
    out: dict[str, Any] = {"strategy": row["strategy"]}
    for key, title in columns.items():
        value, spread = row[key], row.get(f"{key}_sd")
        if key.endswith("_p_max"):
            value = f"{value:.2g}" if math.isfinite(value) else math.nan
        elif spread is not None and math.isfinite(value) and math.isfinite(spread):
            value = f"{value:.3f} ± {spread:.3f}"
        out[title] = value
    return out


def summary_markdown(summary: Sequence[dict], finding: str, k_prime: int) -> str:
    return (f"# Training strategies: summary (mean ± sd over seeds; hidden layers = all but the head; K' = {k_prime})"
            "\n\n" + markdown_table([_view(r, SUMMARY_VIEW) for r in summary], ["strategy", *SUMMARY_VIEW.values()])
            + "\n" + finding + "\n")


def layers_markdown(rows: Sequence[dict], k_prime: int) -> str:
    return (f"# Training strategies: per layer (mean ± sd over seeds; K' = {k_prime})\n\n"
            + markdown_table([_view(r, LAYERS_VIEW) for r in rows], ["strategy", *LAYERS_VIEW.values()]))


def aggregate(sweep_dir: str | os.PathLike, wandb_project: str | None = None, k_prime: int = 4) -> dict[str, Any]:
    """Write the summary and per-layer tables (md + csv) and both plots into `sweep_dir`, log them to the sweep's
    W&B group when a project is given (`sweep.publish`). Returns the files, rows, finding and number of jobs."""
    sweep_dir = Path(sweep_dir)
    results = read_results(sweep_dir, RESULT_FILE, RESULT_FIELDS)
    layers, summary = layer_rows(results, k_prime), summary_rows(results, k_prime)
    finding = finding_text(summary, k_prime)
    plots = {"strategies/layers_plot": layers_chart(layers, sweep_dir / LAYERS_PNG, k_prime),
             "strategies/accuracy_plot": accuracy_chart(summary, sweep_dir / ACCURACY_PNG)}
    tables = {"strategies/summary": Table("strategies_summary", summary_markdown(summary, finding, k_prime), summary,
                                          SUMMARY_COLUMNS),
              "strategies/layers": Table("strategies_layers", layers_markdown(layers, k_prime), layers, LAYER_COLUMNS)}
    out = publish(sweep_dir, results, tables, plots, wandb_project, "study", {"strategies/finding": finding})
    return out | {"rows": {"summary": summary, "layers": layers}, "finding": finding}
