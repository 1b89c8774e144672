"""Which neurons to prune (spec §10.1, §9.6): strategies over a dissection's records, always by neuron INDEX.

Every strategy returns a `Selection` of (layer, unit) pairs. Candidates are ranked by a strategy-specific
priority with ties broken by a seeded shuffle, then capped (`max_units` / `max_fraction`), so a capped
selection keeps the best-matching neurons and the same seed gives the same units. The output layer is never
a candidate unless `include_head` is set. Concept words match whole words up to inflection (`words_match`),
never substrings: `rain` does not match `train`.
"""
from __future__ import annotations

import logging
import math
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from and_lightning.describe.lexicon import find, normalise_word
from and_lightning.stages.describe import read_descriptions

log = logging.getLogger(__name__)

Unit = tuple[str, int]
STRATEGIES = ("class", "concept", "adjective", "attribute_count", "random")
# MILAN-style ablation (spec §9.6): the captioner's most frequent "basic" adjectives in the paper.
PAPER_BASIC_ADJECTIVES = ("clear", "high-pitched", "high", "loud")
ATTRIBUTES = ("random", "basic_adj", "high_adj", "adjectives", "nouns", "verbs")
# OCP (spec §10.1) keys on the nouns of a neuron's calibrated summary (sound sources), not on its adjectives.
CONCEPT_FIELDS = ("nouns",)
MATCHES = ("word", "substring")  # how a concept word matches a term: whole words, or the original's substring


@dataclass
class Selection:
    """The units to prune, in layer order then unit index, with why each was chosen."""

    strategy: str
    units: list[Unit]
    prunable: int  # how many units the strategy chose from (the hidden units of the dissected layers)
    reasons: dict[Unit, str] = field(default_factory=dict)
    note: str = ""  # one line: what the selection rests on, or why it is empty

    def __len__(self) -> int:
        return len(self.units)

    def by_layer(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for layer, unit in self.units:
            out.setdefault(layer, []).append(unit)
        return out

    @property
    def fraction(self) -> float:
        return len(self.units) / self.prunable if self.prunable else 0.0


# --- descriptions ---------------------------------------------------------------------------------------
def descriptions_file(path: str | os.PathLike) -> Path:
    """`path` itself, or `path/descriptions.jsonl` when given a dissection directory."""
    path = Path(path)
    return path / "descriptions.jsonl" if path.is_dir() else path


def load_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A dissection's neuron records; each must carry `layer` and an integer `unit`."""
    path = descriptions_file(path)
    records = read_descriptions(path)
    if not records:
        raise ValueError(f"{path}: no neuron records")
    for i, r in enumerate(records):
        if "layer" not in r or not isinstance(r.get("unit"), int):
            raise ValueError(f"{path}: record {i} lacks 'layer' or an integer 'unit' (got keys {sorted(r)})")
    return records


def prunable_records(records: Sequence[dict], head: str, include_head: bool = False,
                     layers: Sequence[str] | None = None) -> list[dict]:
    """Records of the layers that may be pruned: `layers` if given, else all; the head only if asked."""
    present = list(dict.fromkeys(r["layer"] for r in records))
    if layers is not None:
        missing = [name for name in layers if name not in present]
        if missing:
            raise ValueError(f"prune.layers: {missing} are not in the dissection (it has {present})")
        wanted = set(layers)
    else:
        wanted = set(present)
    if not include_head:
        wanted.discard(head)
    return [r for r in records if r["layer"] in wanted]


def words_match(a: str, b: str) -> bool:
    """Whether one term's words occur, whole, consecutive and up to inflection, in the other's (either way round:
    the paper's OCP takes a noun that is part of the class name). So "drop" matches "water_drops", "chirping"
    matches "chirp", "church bell" matches "church_bells", "low_rumble" matches "are low rumbles", but "rain"
    does not match "train" and "use" does not match "mouse_click" (`lexicon.find`).
    """
    return find(a, b) is not None or find(b, a) is not None


# --- strategies: each yields (record, priority, reason) for its candidates ------------------------------
Candidate = tuple[dict, float, str]


def class_candidates(records: Iterable[dict], target: str, top: int = 3, closed_method: str | None = None,
                     source: str = "descriptions") -> list[Candidate]:
    """Spec §10.1 db/tab: neurons with `target` among their `top` closed-set concepts (rank 1 first).

    `closed_method` ("db", "tab", "db/cos_cubed", ...) must match the method the dissection used.
    """
    out = []
    for r in records:
        method = r.get("closed_method", "")
        if closed_method and not (method == closed_method or method.startswith(closed_method + "/")):
            raise ValueError(f"prune.closed_method={closed_method} but {source} was described with "
                             f"'{method}' (re-run dissect.py with describe.closed_set.method={closed_method})")
        ranked = [c["concept"] for c in r.get("closed_concepts") or []]
        if len(ranked) < top:
            raise ValueError(f"{source}: {r['layer']}#{r['unit']} stores {len(ranked)} closed concepts, fewer "
                             f"than prune.top={top} (dissect with describe.closed_set.top_n>={top})")
        if target in ranked[:top]:
            rank = ranked.index(target) + 1
            out.append((r, -rank, f"{target} is closed concept #{rank} ({method})"))
    return out


def concept_candidates(records: Iterable[dict], words: Sequence[str],
                       fields: Sequence[str] = CONCEPT_FIELDS, match: str = "word") -> list[Candidate]:
    """Open-concept pruning (OCP, corrected): neurons whose `fields` (the paper's: the calibrated summary's
    nouns) contain a term matching any of `words` as whole words (`words_match`). `match="substring"` is
    the original's test instead, `term in word` (`noun in class_name`: "rain" matches "train", "use" matches
    "mouse_click"). Priority: the number of distinct matched terms."""
    if match not in MATCHES:
        raise ValueError(f"prune.match={match}: expected one of {', '.join(MATCHES)}")
    matches = words_match if match == "word" else lambda word, term: term in word
    out = []
    for r in records:
        terms = list(dict.fromkeys(t for f in fields for t in (r.get(f) or [])))
        hits = sorted({t for t in terms if any(matches(w, t) for w in words)})
        if hits:
            out.append((r, len(hits), "matches " + ", ".join(hits)))
    return out


def adjective_candidates(records: Iterable[dict], adjectives: Sequence[str],
                         field_name: str = "adjectives") -> list[Candidate]:
    """Fig. 4c: neurons whose acoustic adjectives include any of `adjectives` (exact, after normalising
    "High pitched" -> "high-pitched"). Priority: how many of them."""
    wanted = {normalise_word(a) for a in adjectives}
    out = []
    for r in records:
        hits = sorted(wanted & {normalise_word(a) for a in r.get(field_name) or []})
        if hits:
            out.append((r, len(hits), "tagged " + ", ".join(hits)))
    return out


def attribute_count(record: dict, attribute: str, basic: Sequence[str] = PAPER_BASIC_ADJECTIVES) -> int:
    """Spec §9.6: a neuron's MILAN-style attribute count (basic_adj: |adjectives ∩ basic|, high_adj: the
    rest of its adjectives, adjectives/nouns/verbs: list lengths, random: 0)."""
    if attribute == "random":
        return 0
    if attribute in ("basic_adj", "high_adj"):
        adjs = {normalise_word(a) for a in record.get("adjectives") or []}
        inside = adjs & {normalise_word(b) for b in basic}
        return len(inside) if attribute == "basic_adj" else len(adjs - inside)
    if attribute in ("adjectives", "nouns", "verbs"):
        return len(set(record.get(attribute) or []))
    raise ValueError(f"prune.attribute={attribute}: expected one of {', '.join(ATTRIBUTES)}")


def attribute_candidates(records: Iterable[dict], attribute: str,
                         basic: Sequence[str] = PAPER_BASIC_ADJECTIVES) -> list[Candidate]:
    """Every neuron, ranked by its attribute count (the budget then takes the top of the ranking)."""
    out = []
    for r in records:
        n = attribute_count(r, attribute, basic)
        out.append((r, n, f"{attribute}={n}"))
    return out


# --- ranking, budget, dispatch ---------------------------------------------------------------------------
def rank(candidates: Sequence[Candidate], seed: int) -> list[Candidate]:
    """Highest priority first; ties in a seeded random order (spec §9.6: shuffle, then stable sort)."""
    order = list(candidates)
    random.Random(seed).shuffle(order)
    return sorted(order, key=lambda c: -c[1])


def budget(node: Mapping[str, Any], prunable: int) -> int | None:
    """The cap on selected units: the smaller of `max_units` and floor(`max_fraction` x prunable units)."""
    caps = []
    if node.get("max_units") is not None:
        if int(node["max_units"]) < 0:
            raise ValueError(f"prune.max_units must be >= 0, got {node['max_units']}")
        caps.append(int(node["max_units"]))
    if node.get("max_fraction") is not None:
        frac = float(node["max_fraction"])
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"prune.max_fraction must be in [0, 1], got {frac}")
        caps.append(math.floor(frac * prunable + 1e-9))
    return min(caps) if caps else None


def _as_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not value:
        raise ValueError(f"prune.{name} is empty: give a word or a list of words")
    return [str(v) for v in value]


def concept_words(node: Mapping[str, Any]) -> list[str]:
    """`prune.words` for the target: a word, a list, a mapping class -> words, or null (the target's name)."""
    words, target = node.get("words"), node.get("target")
    if isinstance(words, Mapping):
        words = words.get(target)
    if words is None:
        if not target:
            raise ValueError("prune=concept needs prune.words or a prune.target whose name gives the words")
        return [str(target)]
    return _as_list(words, "words")


def strategy_label(node: Mapping[str, Any]) -> str:
    """A short name for tables: `prune.label` if set, else the strategy and its key parameter."""
    if node.get("label"):
        return str(node["label"])
    name = node["name"]
    if name == "class":
        return f"class({node.get('closed_method') or 'closed'},top{node.get('top', 3)})"
    if name == "adjective":
        return f"adjective({'+'.join(_as_list(node.get('adjectives'), 'adjectives'))})"
    if name == "attribute_count":
        return f"attribute_count({node.get('attribute')})"
    if name == "random" and node.get("like"):
        return f"random(like {node['like']})"
    if name == "concept" and node.get("fallback_words"):
        return f"concept(fallback {node['fallback_words']})"
    return str(name)


def _concept(pool: list[dict], node: Mapping[str, Any],
             label_of: Mapping[str, str] | None) -> tuple[list[Candidate], str]:
    """Concept candidates for the target's words, falling back (with `fallback_words` > 0) on the words most
    specific to the target's top units (`target_vocabulary`) when its own words name no unit; and the note."""
    words, fields = concept_words(node), list(node.get("fields") or CONCEPT_FIELDS)
    match = str(node.get("match") or "word")
    found = concept_candidates(pool, words, fields, match)
    said = f"words {', '.join(words)} in {'/'.join(fields)}"
    if found or not node.get("target"):
        return found, f"{said}: {len(found)} units"
    vocab = [w for w, *_ in target_vocabulary(pool, str(node["target"]), label_of, fields)] if label_of else []
    why = f"no unit's {'/'.join(fields)} name {', '.join(words)}"
    n = int(node.get("fallback_words") or 0)
    if not vocab:
        return [], (f"{why}, and the units whose top clips are mostly {node['target']} use no word more often "
                    "than the other units" if label_of else why)
    if n <= 0:
        return [], f"{why}; words its top units use: {', '.join(vocab[:10])} (prune.fallback_words=N uses them)"
    found = concept_candidates(pool, vocab[:n], fields, match)
    return found, f"{why}; used the words its top units use: {', '.join(vocab[:n])}: {len(found)} units"


def _candidates(records: list[dict], node: Mapping[str, Any], name: str, source: str) -> list[Candidate]:
    target = node.get("target")
    if name == "class":
        if not target:
            raise ValueError("prune=class needs prune.target (a class name)")
        return class_candidates(records, str(target), int(node.get("top", 3)), node.get("closed_method"), source)
    if name == "adjective":
        return adjective_candidates(records, _as_list(node.get("adjectives"), "adjectives"))
    if name == "attribute_count":
        return attribute_candidates(records, str(node.get("attribute")),
                                    list(node.get("basic_adjectives") or PAPER_BASIC_ADJECTIVES))
    if name == "random":
        return [(r, 0.0, "random") for r in records]
    raise ValueError(f"prune.name={name}: expected one of none, {', '.join(STRATEGIES)}")


def _sorted_units(chosen: Iterable[Candidate], layer_order: Mapping[str, int]) -> tuple[list[Unit], dict[Unit, str]]:
    reasons = {(r["layer"], r["unit"]): why for r, _, why in chosen}
    units = sorted(reasons, key=lambda u: (layer_order[u[0]], u[1]))
    return units, reasons


def select_units(records: Sequence[dict], node: Mapping[str, Any], head: str, source: str = "descriptions",
                 label_of: Mapping[str, str] | None = None) -> Selection:
    """Apply the strategy `node["name"]` (a `prune` config as a dict) to a dissection's records.

    `random` draws as many units as `max_units`/`max_fraction` allow, or, with `like: <strategy>`, as many
    as that strategy selects for the same target (per layer when `per_layer`). `label_of` (clip id -> class
    name) lets a concept whose words name no unit fall back on its top units' words (`fallback_words`), or
    say which words those would be. The selection's `note` says in one line what it rests on or why it is empty.
    """
    name = str(node["name"])
    pool = prunable_records(records, head, bool(node.get("include_head", False)), node.get("layers"))
    if not pool:
        raise ValueError(f"{source}: no prunable layers (only the head '{head}' was dissected; "
                         "set prune.include_head=true to prune it)")
    layer_order = {layer: i for i, layer in enumerate(dict.fromkeys(r["layer"] for r in records))}
    seed = int(node.get("seed") or 0)
    cap = budget(node, len(pool))
    note = ""
    if name == "random" and node.get("like") and cap is None:
        chosen, note = _random_like(pool, node, head, source, seed, label_of)
    else:
        if name in ("random", "attribute_count") and cap is None:
            raise ValueError(f"prune={name} needs a budget: prune.max_units or prune.max_fraction"
                             + (" (or prune.like=<strategy>)" if name == "random" else ""))
        if name == "concept":
            candidates, note = _concept(pool, node, label_of)
        else:
            candidates = _candidates(pool, node, name, source)
            if name == "class":
                note = f"{len(candidates)} units have {node['target']} in their top-{node.get('top', 3)} closed concepts"
        ranked = rank(candidates, seed)
        chosen = ranked if cap is None else ranked[:cap]
    units, reasons = _sorted_units(chosen, layer_order)
    selection = Selection(strategy_label(node), units, len(pool), reasons, note or f"{len(units)} units")
    if not units:
        message = f"prune={name} selected no units from {source} for {node.get('target')}: {selection.note}"
        if not node.get("allow_empty", False):
            raise ValueError(message + " (set prune.allow_empty=true to measure an empty selection)")
        log.warning(message)
    return selection


def _random_like(pool: list[dict], node: Mapping[str, Any], head: str, source: str, seed: int,
                 label_of: Mapping[str, str] | None) -> tuple[list[Candidate], str]:
    """Random units, as many as the `like` strategy picks (in each layer when `per_layer`, default)."""
    like = {**node, "name": node["like"], "like": None, "label": None, "allow_empty": True}
    reference = select_units(pool, like, head, source, label_of)
    note = f"as many as {reference.strategy}: {reference.note}"
    shuffled = rank([(r, 0.0, f"random (count of {reference.strategy})") for r in pool], seed)
    if not node.get("per_layer", True):
        return shuffled[:len(reference)], note
    want = Counter(layer for layer, _ in reference.units)
    chosen = []
    for c in shuffled:
        if want[c[0]["layer"]] > 0:
            want[c[0]["layer"]] -= 1
            chosen.append(c)
    return chosen, note


def target_vocabulary(records: Sequence[dict], target: str, label_of: Mapping[str, str],
                      fields: Sequence[str] = CONCEPT_FIELDS, min_share: float = 0.6,
                      head: str | None = None) -> list[tuple[str, int, int]]:
    """Words used by the units whose top clips are mostly of class `target`: (word, such units using it,
    other units using it), most specific first. Helps choose `prune.words` when the captioner does not
    name sound sources with the class words."""
    mine: Counter[str] = Counter()
    other: Counter[str] = Counter()
    for r in records:
        if r["layer"] == head or not r.get("top_clips"):
            continue
        labels = [label_of.get(c) for c in r["top_clips"]]
        words = {t for f in fields for t in (r.get(f) or [])}
        (mine if labels.count(target) / len(labels) >= min_share else other).update(words)
    vocab = [(w, n, other[w]) for w, n in mine.items() if n > other[w]]
    return sorted(vocab, key=lambda x: (-(x[1] - x[2]), x[0]))


def check_against_model(records: Sequence[dict], widths: Mapping[str, int], source: str) -> None:
    """Every record's layer exists in the model and its unit index is within the layer's width."""
    for r in records:
        if r["layer"] not in widths:
            raise ValueError(f"{source}: layer '{r['layer']}' is not a layer of the checkpoint's model "
                             f"({', '.join(widths)}); was it dissected from another model?")
        if not 0 <= r["unit"] < widths[r["layer"]]:
            raise ValueError(f"{source}: {r['layer']}#{r['unit']} is out of range: the layer has "
                             f"{widths[r['layer']]} units in the checkpoint's model")

