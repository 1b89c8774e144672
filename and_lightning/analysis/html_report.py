"""A static HTML report of one dissection: one page, its short audio files and small spectrograms beside it.

`index.html` (templates/report.html) lists every neuron (description, closed concepts with scores, adjectives,
nouns, evaluation scores, and its top clips as <audio> players with spectrogram images and captions) and filters
and sorts them with a small inline script (templates/filter.js: search box, layer menu, sort by a score with a
range). When a dissection has frame-level windows, a top clip is played, shown and captioned as the window around
the unit's peak, under an inline SVG of the unit's activation over the whole clip with the window marked. Audio
(Ogg Opus) and spectrograms (WebP) sit next to the page (`audio/`, `spec/`), referenced, never inlined, under names
derived from a hash of the clip id or `Window.id`, so the folder can be moved or served as is.

All text that reaches the page (captions, LLM summaries, concept names, clip ids, layer names, score names) is
untrusted: the template is rendered with autoescape, so it is HTML-escaped and only ever placed in text or quoted
attributes (the scores the script sorts by as JSON in a single-quoted attribute, `tojson`), and a
Content-Security-Policy allows exactly the page's own script (by hash), so an injected <script> cannot run even if
escaping were missed.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jinja2
import numpy as np
from markupsafe import Markup

from and_lightning.analysis.plots import spectrogram_webp
from and_lightning.data.audio_io import fix_length, load_audio, save_opus
from and_lightning.data.windows import Window
from and_lightning.store.atomic import write_text

AUDIO_EXT, IMAGE_EXT = "opus", "webp"  # Ogg Opus (~24 kbit/s) and lossy WebP: a few kB per clip, both play in browsers


def asset_name(key: str) -> str:
    """A file-name-safe, collision-resistant stem for the audio and spectrogram of a clip (key: its id) or of a
    window (key: `Window.id`)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


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


def curve_points(times: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, seconds: float,
                 width: float, height: float, pad: float = 2.0) -> str:
    """SVG polyline points of an activation curve: time 0..`seconds` across `width`, the values' min..max from the
    bottom to the top of `height` less `pad` (a flat curve in the middle); non-finite points dropped; 0.1 px."""
    t, v = np.asarray(times, np.float64), np.asarray(values, np.float64)
    if t.ndim != 1 or t.shape != v.shape:
        raise ValueError(f"an activation curve needs as many times as values, got shapes {t.shape} and {v.shape}")
    keep = np.isfinite(t) & np.isfinite(v)
    t, v = t[keep], v[keep]
    if t.size == 0:
        return ""
    span = v.max() - v.min()
    level = np.full_like(v, 0.5) if span == 0 else (v - v.min()) / span
    x, y = t / seconds * width, pad + (1 - level) * (height - 2 * pad)
    return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y))


CURVE_SIZE = (240, 40)  # px of a unit's activation curve under a top clip's player


def _aligned(what: str, items: Sequence[Any] | None, layer: str, unit: int, n: int) -> list[Any]:
    """`items` (a unit's windows or curves) for its first n top clips: None each when absent."""
    if items is None:
        return [None] * n
    if len(items) < n:
        raise ValueError(f"{what}[({layer!r}, {unit})]: {len(items)} given, expected one per top clip ({n})")
    return list(items[:n])


def _numeric(scores: Mapping[str, Any]) -> dict[str, float]:
    """The finite number-valued scores (what the page sorts and filters units by)."""
    return {k: float(v) for k, v in scores.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)}


def clip_view(cid: str, value: float, window: Window | None, curve: tuple[Any, Any] | None,
              captions: Mapping[str, str], clip_seconds: float) -> dict[str, Any]:
    """What the template shows of one top clip: the clip, or the window around the unit's peak in it (`piece`: its
    audio and spectrogram are the assets of `key`; its caption is looked up by `Window.id`, else by clip id), and
    the unit's activation curve over the clip with the window marked."""
    if window is not None and window.clip_id != cid:
        raise ValueError(f"window {window.id!r} is not of top clip {cid!r}: windows must be aligned with top_clips")
    key = window.id if window is not None else cid
    width, height = CURVE_SIZE
    return {"id": cid, "value": float(value), "piece": window or cid, "key": key,
            "caption": captions.get(key, captions.get(cid, "")),
            "window": None if window is None else (f"{window.start:.3f}", f"{window.end:.3f}"),
            "curve": None if curve is None else {
                "points": curve_points(*curve, clip_seconds, width, height), "width": width, "height": height,
                "mark": None if window is None else (f"{window.start / clip_seconds * width:.1f}",
                                                     f"{window.seconds / clip_seconds * width:.1f}")}}


def neuron_view(r: Mapping[str, Any], captions: Mapping[str, str], audio_per_neuron: int,
                extra_scores: Mapping[str, Any], clip_seconds: float, windows: Sequence[Window] | None = None,
                curves: Sequence[tuple[Any, Any]] | None = None) -> dict[str, Any]:
    """What the template shows of one neuron (plain text; the template escapes it)."""
    concepts = [(c.get("concept", ""), c.get("score")) for c in r.get("closed_concepts", [])]
    search = " ".join([f"{r['layer']}#{r['unit']}", str(r["layer"]), f"unit:{r['unit']}",
                       *[c for c, _ in concepts], *r.get("adjectives", []), *r.get("nouns", []),
                       str(r.get("description", ""))]).lower()
    clips = list(zip(r.get("top_clips", []), r.get("top_values", [])))[:audio_per_neuron]
    scores = {**(r.get("scores") or {}), **extra_scores}
    per_clip = zip(clips, _aligned("windows", windows, r["layer"], r["unit"], len(clips)),
                   _aligned("curves", curves, r["layer"], r["unit"], len(clips)))
    return {"layer": r["layer"], "unit": r["unit"], "description": r.get("description", ""), "search": search,
            "concepts": [f"{c} ({_fmt(s)})" if s is not None else c for c, s in concepts],
            "adjectives": r.get("adjectives", []), "nouns": r.get("nouns", []),
            "scores": scores, "sort_scores": _numeric(scores),
            "clips": [clip_view(cid, v, w, c, captions, clip_seconds) for (cid, v), w, c in per_clip]}


def write_assets(pieces: Iterable[str | Window], clip_paths: Mapping[str, str], out_dir: Path, sample_rate: int,
                 clip_seconds: float) -> dict[str, str]:
    """Write each piece, a whole clip (its id) or a `Window` of one, as a short Ogg Opus file and a small WebP
    spectrogram, as the model heard it (resampled, cut/padded to `clip_seconds`, then the window cut out); existing
    files are reused. Returns piece key (clip id or `Window.id`) -> asset stem; clips without a known path are
    skipped."""
    todo: dict[str, str | Window] = {}
    for piece in pieces:
        if isinstance(piece, Window) and not 0 <= piece.start < piece.end <= clip_seconds + 1e-3:
            raise ValueError(f"window {piece.id!r}: expected 0 <= start < end <= clip_seconds ({clip_seconds})")
        key = piece.id if isinstance(piece, Window) else piece
        if _clip_of(piece) in clip_paths:
            todo.setdefault(key, piece)
    n = int(round(clip_seconds * sample_rate))
    assets = {}
    ordered = sorted((_clip_of(piece), key, piece) for key, piece in todo.items())
    for cid, group in itertools.groupby(ordered, lambda item: item[0]):
        wave = None  # each source clip is read once, only when one of its pieces is missing
        for _, key, piece in group:
            stem = asset_name(key)
            audio, image = out_dir / "audio" / f"{stem}.{AUDIO_EXT}", out_dir / "spec" / f"{stem}.{IMAGE_EXT}"
            if not (audio.is_file() and image.is_file()):
                if wave is None:
                    wave = fix_length(load_audio(clip_paths[cid], sample_rate)[0], n).numpy()
                cut = wave if isinstance(piece, str) else \
                    wave[int(round(piece.start * sample_rate)):int(round(piece.end * sample_rate))]
                save_opus(audio, cut, sample_rate)
                spectrogram_webp(cut, sample_rate, image)
            assets[key] = stem
    return assets


def _clip_of(piece: str | Window) -> str:
    return piece.clip_id if isinstance(piece, Window) else piece


def build_html_report(records: Sequence[Mapping[str, Any]], clip_paths: Mapping[str, str],
                      captions: Mapping[str, str], out_dir: str | os.PathLike, sample_rate: int,
                      clip_seconds: float, *, title: str = "AND dissection", audio_per_neuron: int = 3,
                      max_neurons: int | None = None, max_per_layer: int | None = None,
                      metrics: Mapping[str, Any] | None = None,
                      neuron_scores: Mapping[tuple[str, int], Mapping[str, Any]] | None = None,
                      windows: Mapping[tuple[str, int], Sequence[Window]] | None = None,
                      curves: Mapping[tuple[str, int], Sequence[tuple[np.ndarray, np.ndarray]]] | None = None) -> Path:
    """Write `out_dir/index.html` (+ audio/, spec/); returns the page path. The page shows the first
    `max_per_layer` records of each layer, at most `max_neurons` in all (None: no limit).

    `clip_paths` maps clip id -> audio file; `neuron_scores[(layer, unit)]` adds evaluation scores to a neuron.
    `windows[(layer, unit)]` (aligned with the record's top_clips) makes the page play, show and caption (captions
    keyed by `Window.id`, else by clip id) the window around the unit's peak instead of the whole clip;
    `curves[(layer, unit)]` (aligned likewise: times in seconds, activations) draws the unit's curve over each clip.
    """
    out_dir = Path(out_dir)
    per_layer: dict[str, int] = {}
    shown = []
    for r in records:
        per_layer[r["layer"]] = per_layer.get(r["layer"], 0) + 1
        if max_per_layer is None or per_layer[r["layer"]] <= max_per_layer:
            shown.append(r)
    shown = shown if max_neurons is None else shown[:max_neurons]
    windows, curves, scores = windows or {}, curves or {}, neuron_scores or {}
    neurons = [neuron_view(r, captions, audio_per_neuron, scores.get((r["layer"], r["unit"]), {}), clip_seconds,
                           windows.get((r["layer"], r["unit"])), curves.get((r["layer"], r["unit"])))
               for r in shown]
    assets = write_assets([c["piece"] for n in neurons for c in n["clips"]], clip_paths, out_dir, sample_rate,
                          clip_seconds)
    csp = (f"default-src 'none'; script-src {script_hash(FILTER_SCRIPT)}; style-src 'unsafe-inline'; "
           "img-src 'self'; media-src 'self'")
    page = ENV.get_template("report.html").render(
        title=title, csp=csp, script=Markup(FILTER_SCRIPT), metrics=metrics or {}, neurons=neurons, assets=assets,
        audio_ext=AUDIO_EXT, image_ext=IMAGE_EXT, layers=list(dict.fromkeys(str(r["layer"]) for r in shown)),
        sort_keys=sorted({k for n in neurons for k in n["sort_scores"]}))
    path = out_dir / "index.html"
    write_text(path, page)
    return path
