"""A static, self-contained HTML report of one dissection: one page, its audio and spectrograms beside it.

`index.html` lists every neuron (description, closed concepts with scores, adjectives, nouns, evaluation
scores, and its top clips as <audio> players with spectrogram images and captions) and filters them with a
small inline script (search box + layer menu). Files sit next to the page (`audio/`, `spec/`) under names
derived from a hash of the clip id, so the folder can be moved or served as is.

All text that reaches the page (captions, LLM summaries, concept names, clip ids, layer names) is untrusted:
it is HTML-escaped, only ever placed in text or quoted attributes, and a Content-Security-Policy allows
exactly the page's own script (by hash), so an injected <script> cannot run even if escaping were missed.
"""
from __future__ import annotations

import base64
import hashlib
import html
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from and_lightning.analysis.plots import spectrogram_png
from and_lightning.data.audio_io import fix_length, load_audio, save_audio
from and_lightning.store.atomic import write_text

FILTER_SCRIPT = """
(function () {
  var box = document.getElementById("search");
  var layer = document.getElementById("layer");
  var count = document.getElementById("count");
  var rows = Array.prototype.slice.call(document.querySelectorAll(".neuron"));
  function apply() {
    var terms = box.value.toLowerCase().split(/\\s+/).filter(function (t) { return t.length > 0; });
    var want = layer.value;
    var shown = 0;
    rows.forEach(function (row) {
      var text = row.getAttribute("data-search");
      var ok = (want === "" || row.getAttribute("data-layer") === want) &&
        terms.every(function (t) { return text.indexOf(t) !== -1; });
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " neurons";
  }
  box.addEventListener("input", apply);
  layer.addEventListener("change", apply);
  apply();
})();
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
header { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ccc; }
input, select { font-size: 1em; padding: .2em .4em; }
.neuron { border: 1px solid #ddd; border-radius: 6px; margin: .8em 0; padding: .6em .9em; }
.neuron h2 { font-size: 1.05em; margin: 0 0 .3em 0; }
.label { color: #666; font-size: .85em; }
.clips { display: flex; flex-wrap: wrap; gap: .8em; margin-top: .5em; }
.clip { width: 250px; font-size: .85em; }
.clip img { width: 240px; height: 120px; display: block; background: #000; }
.clip audio { width: 240px; }
table.metrics td { padding: 0 .8em 0 0; }
"""


def esc(value: Any) -> str:
    """HTML-escape any value's text (quotes too, so it is safe inside quoted attributes)."""
    return html.escape(str(value), quote=True)


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


def neuron_html(r: Mapping[str, Any], captions: Mapping[str, str], assets: Mapping[str, str],
                audio_per_neuron: int, extra_scores: Mapping[str, Any]) -> str:
    """One neuron's <section> (every value escaped)."""
    concepts = [(c.get("concept", ""), c.get("score")) for c in r.get("closed_concepts", [])]
    scores = {**(r.get("scores") or {}), **extra_scores}
    search = " ".join([f"{r['layer']}#{r['unit']}", str(r["layer"]), f"unit:{r['unit']}",
                       *[c for c, _ in concepts], *r.get("adjectives", []), *r.get("nouns", []),
                       str(r.get("description", ""))]).lower()
    parts = [
        f'<section class="neuron" data-layer="{esc(r["layer"])}" data-search="{esc(search)}">',
        f"<h2>{esc(r['layer'])} #{esc(r['unit'])}</h2>",
        f'<p class="description">{esc(r.get("description", ""))}</p>',
        '<p><span class="label">closed concepts:</span> '
        + esc(", ".join(f"{c} ({_fmt(s)})" if s is not None else c for c, s in concepts)) + "</p>",
        f'<p><span class="label">adjectives:</span> {esc(", ".join(r.get("adjectives", [])))}'
        f' &nbsp; <span class="label">nouns:</span> {esc(", ".join(r.get("nouns", [])))}</p>',
    ]
    if scores:
        parts.append('<p><span class="label">scores:</span> '
                     + esc(", ".join(f"{k} = {_fmt(v)}" for k, v in scores.items())) + "</p>")
    clips = []
    for cid, value in list(zip(r.get("top_clips", []), r.get("top_values", [])))[:audio_per_neuron]:
        stem = assets.get(cid)
        media = (f'<img src="spec/{stem}.png" alt="spectrogram of {esc(cid)}">'
                 f'<audio controls preload="metadata" src="audio/{stem}.wav"></audio>') if stem else ""
        clips.append(f'<div class="clip">{media}<div><b>{esc(cid)}</b> ({esc(_fmt(float(value)))})</div>'
                     f'<div class="caption">{esc(captions.get(cid, ""))}</div></div>')
    parts.append('<div class="clips">' + "".join(clips) + "</div></section>")
    return "\n".join(parts)


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
    layers = list(dict.fromkeys(str(r["layer"]) for r in shown))
    options = "".join(f'<option value="{esc(layer)}">{esc(layer)}</option>' for layer in layers)
    metric_rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>" for k, v in (metrics or {}).items())
    body = "\n".join(neuron_html(r, captions, assets, audio_per_neuron,
                                 (neuron_scores or {}).get((r["layer"], r["unit"]), {})) for r in shown)
    csp = (f"default-src 'none'; script-src {script_hash(FILTER_SCRIPT)}; style-src 'unsafe-inline'; "
           "img-src 'self'; media-src 'self'")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<title>{esc(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>{esc(title)}</h1>
<label>search <input id="search" type="search" placeholder="layer#unit, concept, adjective, word"></label>
<label>layer <select id="layer"><option value="">all</option>{options}</select></label>
<span id="count"></span>
</header>
{f'<details><summary>metrics ({len(metrics or {})})</summary><table class="metrics">{metric_rows}</table></details>'
  if metric_rows else ''}
<main>
{body}
</main>
<script>{FILTER_SCRIPT}</script>
</body>
</html>
"""
    path = out_dir / "index.html"
    write_text(path, page)
    return path
