"""Ground-truth description accuracy on the synthetic probing set (every clip's attributes are known).

A neuron's TRUE attributes are the attribute values ("pitch=high", "source=noise_hiss", ...) whose presence
its activation separates: AUROC(activation, has value) >= threshold over all probing clips, i.e. the neuron
is high on clips with that value ("high" direction, the default, since a description describes the
most-activating clips). `direction="both"` also counts AUROC <= 1 - threshold (the neuron is high when the
value is ABSENT). A description NAMES the attribute values its words map to through `ATTRIBUTE_VOCABULARY`
(synonyms -> one value, inflections -> their lemma; negated mentions dropped). Per neuron: precision =
|named & true| / |named|, recall = |named & true| / |true|; per layer they are micro-averaged over the neurons
with a true attribute.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

from and_lightning.analysis.plots import real_vs_shuffled_plot
from and_lightning.analysis.task import (EvalContext, ScorerResult, Table, Task, TaskOutput, TaskSkipped,
    scored_layers)
from and_lightning.describe.lexicon import find_phrases, lemmas, tokens
from and_lightning.describe.open_concepts import is_negated

# word or phrase -> "attribute=value" (None: the phrase means nothing here and blocks its words, e.g.
# "steady pitch" is not a steady rhythm). Matched by lemma ("rumbles" is "rumble", "louder" is "loud"), longest
# phrase first; "high"/"low" alone name nothing.
ATTRIBUTE_VOCABULARY: dict[str, str | None] = {
    # pitch
    **dict.fromkeys("high-pitched shrill squeaky squeaking piercing treble high-frequency".split(), "pitch=high"),
    **dict.fromkeys(["high pitched", "high frequency", "high notes", "high register"], "pitch=high"),
    **dict.fromkeys("low-pitched deep bass bassy low-frequency".split(), "pitch=low"),
    **dict.fromkeys(["low pitched", "low frequency", "low notes", "low register"], "pitch=low"),
    **dict.fromkeys("mid-pitched medium-pitched mid-range midrange mid-frequency".split(), "pitch=mid"),
    **dict.fromkeys(["mid pitched", "medium pitched", "middle register"], "pitch=mid"),
    # loudness
    **dict.fromkeys("loud blaring deafening thunderous powerful intense".split(), "loudness=loud"),
    **dict.fromkeys("quiet faint soft hushed gentle subtle weak muted".split(), "loudness=quiet"),
    **dict.fromkeys(["barely audible", "low volume", "low-volume"], "loudness=quiet"),
    **dict.fromkeys(["high volume", "high-volume"], "loudness=loud"),
    # rhythm
    **dict.fromkeys("pulse pulsating rhythmic throbbing intermittent gated stuttering beating".split(),
                    "rhythm=pulsed"),
    **dict.fromkeys(["on and off", "starts and stops"], "rhythm=pulsed"),
    **dict.fromkeys("steady continuous constant sustained uninterrupted unbroken".split(), "rhythm=steady"),
    **dict.fromkeys(["steady pitch", "steady in pitch", "constant pitch", "pitch steady"], None),
    # background
    **dict.fromkeys(["noisy", "noisy background", "background noise", "background hiss", "noisy recording"],
                    "background=noisy"),
    **dict.fromkeys(["clean", "clean background", "noiseless", "pristine", "no background noise",
                     "without background noise", "no noise", "silent background"], "background=clean"),
    # reverberation
    **dict.fromkeys("reverberant reverberating reverb reverberation echo echoey echoy spacious cavernous".split(),
                    "reverb=reverberant"),
    **dict.fromkeys(["reverberant tail", "echoing tail"], "reverb=reverberant"),
    **dict.fromkeys(["dry", "anechoic", "close-miked", "dry and close"], "reverb=dry"),
    # source type
    **dict.fromkeys(["pure tone", "sine", "sinusoidal", "sine wave", "pure"], "source=pure_tone"),
    **dict.fromkeys("harmonic buzzy buzz overtones".split(), "source=harmonic_tone"),
    **dict.fromkeys(["chord", "chord-like", "harmonic tone"], "source=harmonic_tone"),
    **dict.fromkeys(["rising", "ascending", "upward", "sweeping up", "rising chirp"], "source=rising_chirp"),
    **dict.fromkeys(["falling", "descending", "downward", "sweeping down", "falling chirp"], "source=falling_chirp"),
    **dict.fromkeys("hiss hissy sibilant".split(), "source=noise_hiss"),
    **dict.fromkeys(["white noise", "noise hiss"], "source=noise_hiss"),
    **dict.fromkeys("rumble rumbly".split(), "source=low_rumble"),
    **dict.fromkeys(["low rumble"], "source=low_rumble"),
    **dict.fromkeys("click clicky ticking".split(), "source=click_train"),
    **dict.fromkeys(["click train", "click-train"], "source=click_train"),
    **dict.fromkeys("tremolo trembling tremulous fluttering".split(), "source=tremolo_tone"),
    **dict.fromkeys(["tremolo tone"], "source=tremolo_tone"),
    **dict.fromkeys("vibrato wavering warble".split(), "source=vibrato_tone"),
    **dict.fromkeys(["vibrato tone"], "source=vibrato_tone"),
    **dict.fromkeys("percussive hit drum knock thud tapping".split(), "source=percussive_hits"),
    **dict.fromkeys(["percussive hits"], "source=percussive_hits"),
}
NEGATORS = frozenset(["no", "not", "n't", "never", "without", "nor", "lacks", "lacking", "absent"])
# A negation does not reach past these: "not loud, but quiet" names quiet.
SCOPE_BREAKS = frozenset([",", ".", ";", ":", "!", "?", "but", "though", "although", "yet", "while", "whereas"])


@functools.lru_cache(maxsize=8)
def _phrase_index(vocabulary: tuple[tuple[str, str | None], ...]) -> dict[tuple[str, ...], str | None]:
    """A vocabulary's phrases as lemma tuples -> value (built once); two phrases with the same lemmas must agree."""
    index: dict[tuple[str, ...], str | None] = {}
    for phrase, value in vocabulary:
        key = lemmas(phrase)
        if index.get(key, value) != value:
            raise ValueError(f"ground-truth vocabulary: '{phrase}' ({value}) has the lemmas of a phrase "
                             f"meaning {index[key]}")
        index[key] = value
    return index


def named_attributes(text: str, vocabulary: Mapping[str, str | None] = ATTRIBUTE_VOCABULARY,
                     negation_window: int = 3) -> set[str]:
    """The attribute values a text names: phrases matched longest first, left to right; a match with a
    negator among the `negation_window` tokens before it is dropped (unless the phrase holds the negator
    itself, e.g. "no background noise")."""
    words = tokens(text)
    vocab = _phrase_index(tuple(vocabulary.items()))
    return {vocab[key] for i, key in find_phrases(lemmas(text), vocab)
            if vocab[key] is not None and not is_negated(words, i, negation_window, NEGATORS, SCOPE_BREAKS)}


def attribute_indicators(attributes: Sequence[Mapping[str, str]],
                         values: Mapping[str, Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """(["attr=value", ...], bool [N, V]): which clip has which attribute value (`values` lists each
    attribute's values, e.g. synth.ATTRIBUTES)."""
    names = [f"{a}={v}" for a, vs in values.items() for v in vs]
    Y = np.zeros((len(attributes), len(names)), bool)
    for i, attrs in enumerate(attributes):
        for j, name in enumerate(names):
            a, v = name.split("=", 1)
            Y[i, j] = attrs.get(a) == v
    return names, Y


def auroc_matrix(acts: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """AUROC [M, V] of each neuron's activation (column of acts [N, M]) for each binary label (column of
    Y [N, V]): P(act on a positive clip > act on a negative clip), ties counting one half (Mann-Whitney U
    from average ranks). A label with no positive or no negative clip gives NaN."""
    acts = np.asarray(acts, dtype=np.float64)
    Y = np.asarray(Y, dtype=bool)
    if acts.ndim != 2 or Y.ndim != 2 or acts.shape[0] != Y.shape[0]:
        raise ValueError(f"expected acts [N, M] and labels [N, V] with the same N, got {acts.shape} and {Y.shape}")
    ranks = rankdata(acts, axis=0)  # [N, M], ties averaged
    n_pos = Y.sum(axis=0).astype(np.float64)  # [V]
    n_neg = Y.shape[0] - n_pos
    rank_sum = ranks.T @ Y.astype(np.float64)  # [M, V]
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[:, (n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def true_attributes(auc: np.ndarray, names: Sequence[str], threshold: float, direction: str = "high") -> list[set[str]]:
    """Per neuron, the attribute values it separates: AUROC >= threshold ("high"), or also
    AUROC <= 1 - threshold ("both")."""
    if not 0.5 < threshold <= 1.0:
        raise ValueError(f"AUROC threshold must be in (0.5, 1], got {threshold}")
    if direction not in ("high", "both"):
        raise ValueError(f"direction must be 'high' or 'both', got {direction!r}")
    hit = np.nan_to_num(auc, nan=0.5) >= threshold
    if direction == "both":
        hit |= np.nan_to_num(auc, nan=0.5) <= 1.0 - threshold
    return [{names[j] for j in np.flatnonzero(row)} for row in hit]


@dataclass(frozen=True)
class PRF:
    """Micro-averaged precision / recall / F1 and the counts behind them."""

    tp: int
    named: int
    true: int

    @property
    def precision(self) -> float:
        return self.tp / self.named if self.named else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / self.true if self.true else float("nan")

    @property
    def f1(self) -> float:
        return 2 * self.tp / (self.named + self.true) if self.named + self.true else float("nan")


def score_descriptions(named: Sequence[set[str]], true: Sequence[set[str]]) -> PRF:
    """Micro P/R/F1 over the neurons that have at least one true attribute (the others cannot be scored:
    their share is reported separately as `no_separable`)."""
    if len(named) != len(true):
        raise ValueError(f"{len(named)} descriptions for {len(true)} neurons")
    tp = n = t = 0
    for p, g in zip(named, true):
        if g:
            tp += len(p & g)
            n += len(p)
            t += len(g)
    return PRF(tp, n, t)


def record_text(record: Mapping[str, Any], field: str) -> str:
    """The text of a neuron record that is scored: a string field, a list field joined, or "closed_concept"
    (the top-1 closed-set concept name)."""
    if field == "closed_concept":
        concepts = record.get("closed_concepts") or []
        return str(concepts[0]["concept"]) if concepts else ""
    if field not in record:
        raise KeyError(f"neuron record {record.get('layer')}#{record.get('unit')} has no field '{field}'")
    value = record[field]
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value or "")


def layer_scores(named: Sequence[set[str]], true: Sequence[set[str]], rng: np.random.Generator,
                 shuffles: int) -> dict[str, float]:
    """One layer's P/R/F1, the share of neurons without a separable attribute, and the F1 of the same
    descriptions shuffled among the layer's neurons (mean over `shuffles` permutations)."""
    prf = score_descriptions(named, true)
    shuffled = []
    for _ in range(shuffles):
        perm = rng.permutation(len(named))
        shuffled.append(score_descriptions([named[i] for i in perm], true).f1)
    return {
        "precision": prf.precision, "recall": prf.recall, "f1": prf.f1,
        "f1_shuffled": float(np.nanmean(shuffled)) if shuffled and not np.all(np.isnan(shuffled)) else float("nan"),
        "no_separable": float(np.mean([not g for g in true])) if true else float("nan"),
        "neurons": len(true), "named_per_neuron": float(np.mean([len(p) for p in named])) if named else 0.0,
    }


def ground_truth_report(records: Sequence[Mapping[str, Any]], acts_by_layer: Mapping[str, np.ndarray],
                        clip_attributes: Sequence[Mapping[str, str]], values: Mapping[str, Sequence[str]],
                        threshold: float = 0.75, direction: str = "high", fields: Sequence[str] = ("description",),
                        shuffles: int = 5, seed: int = 0, vocabulary: Mapping[str, str | None] = ATTRIBUTE_VOCABULARY,
                        ) -> ScorerResult:
    """One row per (layer, scored field) with precision, recall, F1, shuffled-description F1 and no_separable;
    per_neuron[(layer, unit)] = {"gt_f1" (NaN without a true attribute), "gt_true": [...], "gt_named": [...]} for
    fields[0]; no distributions (the table's plot is per layer).

    `acts_by_layer[layer]` is [N, M] over the clips whose attributes are `clip_attributes` (same order);
    `records` are the neuron records (unit u = column u).
    """
    if not fields:
        raise ValueError("ground truth: no text field to score (fields is empty)")
    names, Y = attribute_indicators(clip_attributes, values)
    rows, per_neuron = [], {}
    named_by_text: dict[str, set[str]] = {}  # each distinct text parsed once (read-only sets)
    for _, layer, acts, recs in scored_layers(records, acts_by_layer):
        true = true_attributes(auroc_matrix(acts, Y), names, threshold, direction)
        true = [true[r["unit"]] for r in recs]
        for fi, field in enumerate(fields):
            texts = [record_text(r, field) for r in recs]
            named_by_text.update((t, named_attributes(t, vocabulary)) for t in texts if t not in named_by_text)
            named = [named_by_text[t] for t in texts]
            rng = np.random.default_rng([seed, len(rows)])
            rows.append({"layer": layer, "field": field, **layer_scores(named, true, rng, shuffles)})
            if fi == 0:
                per_neuron.update({(layer, r["unit"]): {"gt_f1": score_descriptions([n], [t]).f1,
                                                        "gt_true": sorted(t), "gt_named": sorted(n)}
                                   for r, t, n in zip(recs, true, named)})
    return ScorerResult(rows, per_neuron, {})


class GroundTruth(Task):
    """`fields` of each record scored against the attributes whose presence the neuron separates (AUROC >=
    `auroc_threshold`, `direction` high or both), against the descriptions shuffled `shuffles` times."""

    needs = ("store", "records", "clips")

    def run(self, ctx: EvalContext) -> TaskOutput:
        from and_lightning.data.synth import ATTRIBUTES, clip_attributes

        try:
            attrs = [clip_attributes(ctx.clips[c]) for c in ctx.store.clip_ids]
        except ValueError as e:
            raise TaskSkipped(f"the probing set is not the synthetic set ({e})") from e
        s = self.settings
        rows, per_neuron, _ = ground_truth_report(
            ctx.records, ctx.acts(), attrs, ATTRIBUTES, threshold=s["auroc_threshold"], direction=s["direction"],
            fields=s["fields"], shuffles=s["shuffles"], seed=ctx.seed)
        columns = ["layer", "field", "precision", "recall", "f1", "f1_shuffled", "no_separable", "neurons",
                   "named_per_neuron"]
        main = [r for r in rows if r["field"] == s["fields"][0]]
        title = f"Ground-truth attribute accuracy (AUROC >= {s['auroc_threshold']}, direction {s['direction']})"
        return TaskOutput(
            tables=[Table("ground_truth", rows, columns, title)],
            plots={"ground_truth_f1": real_vs_shuffled_plot(main, "f1", f"F1 of '{s['fields'][0]}'")},
            metrics={f"eval/gt/{r['field']}/{r['layer']}/{k}": float(r[k]) for r in rows
                     for k in ("precision", "recall", "f1", "f1_shuffled", "no_separable")},
            neuron_scores=per_neuron)
