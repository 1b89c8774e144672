"""A static, self-contained HTML report of one dissection: one page, its audio and spectrograms beside it.

`index.html` (templates/report.html) lists every neuron (description, closed concepts with scores, adjectives,
nouns, evaluation scores, and its top clips as <audio> players with spectrogram images and captions) and filters
them with a small inline script (templates/filter.js: search box + layer menu). Files sit next to the page
(`audio/`, `spec/`) under names derived from a hash of the clip id, so the folder can be moved or served as is.

All text that reaches the page (captions, LLM summaries, concept names, clip ids, layer names) is untrusted: the
template is rendered with autoescape, so it is HTML-escaped and only ever placed in text or quoted attributes, and a
Content-Security-Policy allows exactly the page's own script (by hash), so an injected <script> cannot run even if
escaping were missed.
"""
from __future__ import annotations

import base64
import hashlib
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
from markupsafe import Markup

from and_lightning.analysis.plots import spectrogram_png
from and_lightning.data.audio_io import fix_length, load_audio, save_audio
from and_lightning.store.atomic import write_text


def asset_name(clip_id: str) -> str:
    """A file-name-safe, collision-resistant stem for a clip's audio and spectrogram."""
    return hashlib.sha256(clip_id.encode("utf-8")).hexdigest()[:20]


def script_hash(script: str) -> str:
    """The CSP source expression that allows exactly this inline script."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode() + "'"


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple, set)):
        return "[" + ", ".join(map(str, v)) + "]"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3g}"
    return str(v)


ENV = jinja2.Environment(loader=jinja2.PackageLoader("and_lightning.analysis", "templates"), autoescape=True,
                         undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True)
ENV.filters["fmt"] = _fmt
FILTER_SCRIPT = ENV.loader.get_source(ENV, "filter.js")[0]


def neuron_view(r: Mapping[str, Any], captions: Mapping[str, str], assets: Mapping[str, str],
                audio_per_neuron: int, extra_scores: Mapping[str, Any]) -> dict[str, Any]:
    """What the template shows of one neuron (plain text; the template escapes it)."""
    concepts = [(c.get("concept", ""), c.get("score")) for c in r.get("closed_concepts", [])]
    search = " ".join([f"{r['layer']}#{r['unit']}", str(r["layer"]), f"unit:{r['unit']}",
                       *[c for c, _ in concepts], *r.get("adjectives", []), *r.get("nouns", []),
                       str(r.get("description", ""))]).lower()
    clips = list(zip(r.get("top_clips", []), r.get("top_values", [])))[:audio_per_neuron]
    return {"layer": r["layer"], "unit": r["unit"], "description": r.get("description", ""), "search": search,
            "concepts": [f"{c} ({_fmt(s)})" if s is not None else c for c, s in concepts],
            "adjectives": r.get("adjectives", []), "nouns": r.get("nouns", []),
            "scores": {**(r.get("scores") or {}), **extra_scores},
            "clips": [{"id": cid, "value": float(v), "stem": assets.get(cid), "caption": captions.get(cid, "")}
                      for cid, v in clips]}


def write_assets(clip_ids: Sequence[str], clip_paths: Mapping[str, str], out_dir: Path, sample_rate: int,
                 clip_seconds: float) -> dict[str, str]:
    """Write each clip as 16-bit WAV (as the model heard it: resampled, cut/padded) and its spectrogram PNG;
    existing files are reused. Returns clip id -> asset stem (clips without a known path are skipped)."""
    n = int(round(clip_seconds * sample_rate))
    assets = {}
    for cid in dict.fromkeys(clip_ids):
        if cid not in clip_paths:
            continue
        stem = asset_name(cid)
        wav, png = out_dir / "audio" / f"{stem}.wav", out_dir / "spec" / f"{stem}.png"
        if not (wav.is_file() and png.is_file()):
            wave, _ = load_audio(clip_paths[cid], sample_rate)
            wave = fix_length(wave, n)
            save_audio(wav, wave, sample_rate)
            spectrogram_png(wave.numpy(), sample_rate, png)
        assets[cid] = stem
    return assets


def build_html_report(records: Sequence[Mapping[str, Any]], clip_paths: Mapping[str, str],
                      captions: Mapping[str, str], out_dir: str | os.PathLike, sample_rate: int,
                      clip_seconds: float, *, title: str = "AND dissection", audio_per_neuron: int = 3,
                      max_neurons: int | None = None, max_per_layer: int | None = None,
                      metrics: Mapping[str, Any] | None = None,
                      neuron_scores: Mapping[tuple[str, int], Mapping[str, Any]] | None = None) -> Path:
    """Write `out_dir/index.html` (+ audio/, spec/); returns the page path. The page shows the first
    `max_per_layer` records of each layer, at most `max_neurons` in all (None: no limit).

    `clip_paths` maps clip id -> audio file; `neuron_scores[(layer, unit)]` adds evaluation scores to a neuron.
    """
    out_dir = Path(out_dir)
    per_layer: dict[str, int] = {}
    shown = []
    for r in records:
        per_layer[r["layer"]] = per_layer.get(r["layer"], 0) + 1
        if max_per_layer is None or per_layer[r["layer"]] <= max_per_layer:
            shown.append(r)
    shown = shown if max_neurons is None else shown[:max_neurons]
    needed = [c for r in shown for c in r.get("top_clips", [])[:audio_per_neuron]]
    assets = write_assets(needed, clip_paths, out_dir, sample_rate, clip_seconds)
    csp = (f"default-src 'none'; script-src {script_hash(FILTER_SCRIPT)}; style-src 'unsafe-inline'; "
           "img-src 'self'; media-src 'self'")
    scores = neuron_scores or {}
    neurons = [neuron_view(r, captions, assets, audio_per_neuron, scores.get((r["layer"], r["unit"]), {})) for r in shown]
    page = ENV.get_template("report.html").render(
        title=title, csp=csp, script=Markup(FILTER_SCRIPT), metrics=metrics or {}, neurons=neurons,
        layers=list(dict.fromkeys(str(r["layer"]) for r in shown)))
    path = out_dir / "index.html"
    write_text(path, page)
    return path
