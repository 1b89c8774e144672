"""PNG plots of the evaluation (matplotlib's object API, Agg canvas: no display, no global pyplot state).

The evaluation's plots are returned as figures (stages/evaluate.py writes them with `save_png` and the report stage
logs them to W&B as wandb.Image); `spectrogram_webp` writes the HTML report's small images itself.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from and_lightning.store.atomic import atomic_path


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = 110, bbox_inches: str | None = "tight") -> str:
    """Write `fig` as a PNG atomically (complete or absent); returns the path."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches=bbox_inches)
    return str(path)


def adjective_bar_chart(counts: Mapping[str, int], top_n: int, title: str = "") -> Figure:
    """Top-`top_n` adjectives by number of neurons (spec §9.3, Fig. 3/9)."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]
    fig = Figure(figsize=(max(4.0, 0.6 * len(items) + 1.5), 3.6))
    ax = fig.add_subplot()
    ax.bar([k for k, _ in items], [v for _, v in items], color="#4477aa")
    ax.set_ylabel("neurons")
    ax.set_title(title or f"top {top_n} adjectives")
    ax.tick_params(axis="x", labelrotation=45)
    if not items:
        ax.text(0.5, 0.5, "no adjectives", ha="center", va="center", transform=ax.transAxes)
    return fig


def _per_layer_axes(labels: Sequence[str], ylabel: str, inches_per_label: float = 0.7) -> tuple[Figure, Any, Any]:
    """A figure with one x position per label (layer names, rotated), its axes and the positions."""
    x = np.arange(len(labels))
    fig = Figure(figsize=(max(4.0, inches_per_label * len(labels) + 2), 3.6))
    ax = fig.add_subplot()
    ax.set_xticks(x, labels, rotation=45)
    ax.set_ylabel(ylabel)
    return fig, ax, x


def adjectives_per_layer_plot(stats: Mapping[str, Any]) -> Figure:
    """Mean adjectives per neuron per layer with the per-neuron linear fit and its p-value (Fig. 5)."""
    layers = list(stats["means"])
    fig, ax, x = _per_layer_axes(layers, "adjectives per neuron")
    ax.plot(x, [stats["means"][k] for k in layers], "o-", label="mean per neuron")
    if math.isfinite(stats.get("slope", math.nan)):
        ax.plot(x, stats["intercept"] + stats["slope"] * x, "--",
                label=f"fit: slope {stats['slope']:.3f}, p = {stats['p_value']:.2g}")
    ax.legend(fontsize=8)
    return fig


def uninterpretable_plot(fractions: Mapping[str, Mapping[int, float]]) -> Figure:
    """Share of uninterpretable neurons per layer, one line per K' (Fig. 6)."""
    layers = list(fractions)
    fig, ax, x = _per_layer_axes(layers, "uninterpretable neurons (%)")
    for kp in sorted({kp for v in fractions.values() for kp in v}):
        ax.plot(x, [100 * fractions[layer].get(kp, math.nan) for layer in layers], "o-", label=f"K' = {kp}")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    return fig


def real_vs_shuffled_plot(rows: Sequence[Mapping[str, Any]], metric: str, ylabel: str,
                          label_key: str = "layer") -> Figure:
    """Grouped bars per layer: `metric` of the real descriptions next to `<metric>_shuffled`."""
    fig, ax, x = _per_layer_axes([str(r[label_key]) for r in rows], ylabel, inches_per_label=0.8)
    ax.bar(x - 0.2, [r[metric] for r in rows], 0.4, label="descriptions", color="#4477aa")
    ax.bar(x + 0.2, [r[f"{metric}_shuffled"] for r in rows], 0.4, label="shuffled baseline", color="#bbbbbb")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.legend(fontsize=8)
    return fig


def peak_event_plot(rows: Sequence[Mapping[str, Any]], ylabel: str) -> Figure:
    """Grouped bars per layer: the share of (unit, top clip) pairs whose text names the peak event and the other
    event, with whole-clip and with window exemplars (rows of `analysis.peak_events`, keyed by `exemplars`)."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    by = {(r["layer"], r["exemplars"]): r for r in rows}
    fig, ax, x = _per_layer_axes(layers, ylabel, inches_per_label=1.2)
    bars = [("clip", "names_peak", "clips: peak event", "#88aacc"),
            ("clip", "names_other", "clips: other event", "#dddddd"),
            ("window", "names_peak", "windows: peak event", "#224488"),
            ("window", "names_other", "windows: other event", "#888888")]
    for i, (kind, key, label, color) in enumerate(bars):
        ax.bar(x + (i - 1.5) * 0.2, [by[layer, kind][key] for layer in layers], 0.2, label=label, color=color)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def spectrogram_webp(wave: np.ndarray, sample_rate: int, path: str | os.PathLike, n_fft: int = 512,
                     size: tuple[int, int] = (192, 96), quality: int = 70) -> str:
    """A small (`size` px) log-power spectrogram image of a clip or window, 80 dB range, magma colours, lossy WebP
    (a few kB: the HTML report carries hundreds of them). Written atomically; returns the path."""
    x = np.asarray(wave, np.float64)
    hop = n_fft // 4
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    db = 10 * np.log10(np.abs(np.fft.rfft(frames, axis=1)).T ** 2 + 1e-10)
    level = np.clip((db - (db.max() - 80)) / 80, 0, 1)[::-1]  # low frequencies at the bottom
    rgb = (colormaps["magma"](level)[..., :3] * 255).round().astype(np.uint8)
    image = Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)
    with atomic_path(path) as tmp:
        image.save(tmp, format="WEBP", quality=quality, method=6)
    return str(path)


def score_distribution_plot(dists: Mapping[str, tuple[np.ndarray, np.ndarray]], ylabel: str) -> Figure:
    """Per layer, box plots of a per-unit score: the real descriptions' (blue) beside the shuffled ones' (grey)."""
    fig, ax, x = _per_layer_axes(list(dists), ylabel, inches_per_label=0.8)
    for values, shift, color in ((0, -0.2, "#4477aa"), (1, 0.2, "#bbbbbb")):
        data = [np.asarray(d[values], np.float64) for d in dists.values()]
        data = [d[np.isfinite(d)] for d in data]
        parts = ax.boxplot(data, positions=x + shift, widths=0.35, patch_artist=True, manage_ticks=False)
        for box in parts["boxes"]:
            box.set_facecolor(color)
    ax.legend([Rectangle((0, 0), 1, 1, color=c) for c in ("#4477aa", "#bbbbbb")],
              ["descriptions", "shuffled baseline"], fontsize=8)
    return fig
