"""Whose event a description names, on the two-event synthetic set (`data/synth_two_event.py`).

For each unit and each of its top clips, the event under the unit's peak frame (the class whose event slot covers
the peak time) is the *peak event*, the clip's other event the *other event*. `peak_event_naming` counts how often
the unit's description (or the caption of each exemplar) names each: a description of whole clips mixes both
events, a description of the windows around the peaks should name the peak event. A class is "named" when its sound kind appears in the text
(`names_class`: "pure_tone" -> "pure tone(s)"), which is how the offline acoustic captioner words its captions: the
figure measures how the exemplars steer the words, with a captioner whose vocabulary is shaped around the synthetic
classes, not how well a general captioner would recognise them.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from and_lightning.data.clips import ClipRecord
from and_lightning.data.synth_two_event import event_at


def names_class(text: str, class_name: str) -> bool:
    """Whether `text` names the sound kind `class_name` ("low_rumble": "low rumble" or "low rumbles", any case)."""
    *head, last = class_name.split("_")
    stem = last[:-1] if last.endswith("s") and not last.endswith("ss") else last  # "hits" -> "hit"
    pattern = r"\b" + r"\s+".join([*head, re.escape(stem)]) + r"(e?s)?\b"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def peak_event_naming(records: Iterable[Mapping[str, Any]], peaks: Mapping[str, np.ndarray],
                      row_of: Mapping[str, int], clips: Mapping[str, ClipRecord],
                      text: Callable[[Mapping[str, Any], int], str] = lambda r, i: r["description"],
                      ) -> list[dict[str, Any]]:
    """Per layer with peak times: over every (unit, top clip) pair whose peak falls in an event, the share of pairs
    whose text names the peak event, the other event, both and neither. `peaks[layer]`: peak times [N, M] (NaN: no
    time axis, the layer is left out); `row_of`: clip id -> row; `text(record, i)`: the text judged for the
    record's i-th top clip (default: the unit's description; e.g. that clip's or window's caption)."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in records:
        layer_peaks = peaks.get(r["layer"])
        if layer_peaks is None:
            continue
        for i, cid in enumerate(r["top_clips"]):
            t = float(layer_peaks[row_of[cid], r["unit"]])
            if math.isnan(t):
                continue
            at = event_at(clips[cid], t)
            c = counts[r["layer"]]
            c["pairs"] += 1
            if at is None:
                c["in_silence"] += 1
                continue
            other = next(e["source"] for e in clips[cid].meta["events"] if e["source"] != at)
            judged = text(r, i)
            peak_named, other_named = names_class(judged, at), names_class(judged, other)
            c["in_event"] += 1
            c["peak"] += peak_named
            c["other"] += other_named
            c["both"] += peak_named and other_named
            c["neither"] += not (peak_named or other_named)
    return [{"layer": layer, "pairs": c["pairs"], "peak_in_silence": c["in_silence"] / c["pairs"],
             **{f"names_{k}": c[k] / c["in_event"] if c["in_event"] else float("nan")
                for k in ("peak", "other", "both", "neither")}}
            for layer, c in counts.items()]
