"""Stage 3: per-neuron descriptions: Module A closed-set concepts, summaries, Module B calibration, Module C.

Each layer's records are written atomically to `layers/<layer>.jsonl` and skipped on a rerun; every LLM reply
goes through the LLM's disk cache, so a run killed mid-way resumes without repeating a finished call.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from and_lightning.data.clips import ClipDataset, ClipRecord
from and_lightning.describe.calibration import ORIGINAL_THRESHOLD, Calibrated, calibrate_many
from and_lightning.describe.closed_set import (
    db_probs, icl_request, parse_icl_reply, scores_from_p, tab_scores_matrix, top_concepts,
)
from and_lightning.describe.exemplars import exemplar_windows
from and_lightning.describe.similarity import TOP_CLIP_SIMILARITIES
from and_lightning.describe.llm.base import ChatLLM, ChatRequest
from and_lightning.describe.llm.prompts import summary_messages
from and_lightning.describe.open_concepts import (
    OpenConcepts, acoustic_filter_request, acoustic_verdict, apply_acoustic_filter, extract_open_concepts,
    words_needing_decision,
)
from and_lightning.describe.lexicon import is_acoustic, normalise_word
from and_lightning.describe.rule_summary import extractive_summary
from and_lightning.describe.sentences import clean_llm_summary
from and_lightning.store.activations import ActivationStore
from and_lightning.store.atomic import write_npy, write_text

log = logging.getLogger(__name__)
# The similarity the paper reads downstream for each method (spec §5.2, §5.3) when describe.closed_set.similarity
# is null.
METHOD_SIMILARITY = {"db": "cos_cubed", "tab": "soft_wpmi"}


def similarity_name(closed_set: Mapping[str, Any]) -> str:
    return closed_set["similarity"] or METHOD_SIMILARITY[closed_set["method"]]


def require_audio_side(method: str, encoder: Any) -> None:
    """TAB scores CLAP audio embeddings against concept text: the text encoder (class or instance) must have
    an audio side (`encode_audio`)."""
    if method == "tab" and not hasattr(encoder, "encode_audio"):
        name = encoder.__name__ if isinstance(encoder, type) else type(encoder).__name__
        raise ValueError(f"describe.closed_set.method=tab needs a text encoder with an audio side, i.e. "
                         f"text_encoder=clap; text_encoder is {name}, which encodes text only")


def tab_audio_embedder(encoder: Any, clips: Sequence[ClipRecord], clip_seconds: float,
                       path: str | os.PathLike) -> Callable[[], torch.Tensor] | None:
    """() -> CLAP audio embeddings [N, d] of `clips` (each cut / padded to `clip_seconds`, read at the
    encoder's rate), computed on the first call and kept in `path` for reruns; None when the encoder has no
    audio side."""
    if not hasattr(encoder, "encode_audio"):
        return None
    path = Path(path)

    @functools.cache
    def embed() -> torch.Tensor:
        if path.is_file():
            return torch.from_numpy(np.load(path))
        data = ClipDataset(clips, encoder.audio_sample_rate, clip_seconds)
        emb = encoder.encode_audio((data[i]["audio"] for i in range(len(data))), encoder.audio_sample_rate)
        write_npy(path, emb.numpy())
        return emb

    return embed


def closed_set_scores(store: ActivationStore, layer: str, P: torch.Tensor, dcfg: DictConfig, p_is_prob: bool,
                      head_layer: str | None) -> torch.Tensor:
    """S [M, C] for one layer over all clips (faithful DB: hidden layers on their top-k clips only; the original
    ran TAB on all clips of every layer, spec §5.2)."""
    cs = dcfg.closed_set
    acts = torch.from_numpy(np.array(store.acts(layer), dtype=np.float32))
    tiebreak = (torch.from_numpy(np.array(store.tiebreak(layer))) if similarity_name(cs) in TOP_CLIP_SIMILARITIES
                else None)
    faithful_k = cs.faithful_top_k if dcfg.faithful and cs.method == "db" and layer != head_layer else None
    return scores_from_p(acts, P, similarity_name(cs), p_is_prob=p_is_prob, faithful=dcfg.faithful,
                         faithful_top_k=faithful_k, tiebreak=tiebreak, **dict(cs.similarity_params or {}))


def summarise(clip_sets: Sequence[tuple[str, ...]], captions: Mapping[str, str], llm: ChatLLM | None,
              min_share: float, clean: bool, known: dict[tuple[str, ...], str] | None = None,
              fixes: dict[tuple[str, ...], tuple] | None = None) -> tuple[dict[tuple[str, ...], str], dict]:
    """One summary per unique clip set: the LLM's commonality summary (cleaned by `clean_llm_summary`), or offline
    the shared descriptors; and per set what the cleaning fixed (nothing offline). Sets already in `known` (e.g.
    other layers' summaries) are not summarised again; the new ones are added to `known` and `fixes`, which are
    returned."""
    known = {} if known is None else known
    fixes = {} if fixes is None else fixes
    new = [s for s in dict.fromkeys(clip_sets) if s not in known]
    texts = [[captions[c] for c in s] for s in new]
    if llm is None:
        known.update((s, extractive_summary(t, min_share=min_share, clean=clean)) for s, t in zip(new, texts))
        return known, fixes
    replies = llm.complete_many([ChatRequest(summary_messages(t, clean=clean), kind="summary") for t in texts])
    for s, r in zip(new, replies):
        known[s], fixes[s] = clean_llm_summary(str(r))
    return known, fixes


def acoustic_decisions(adjective_lists: Sequence[Sequence[str]], llm: ChatLLM | None,
                       mode: str) -> tuple[Any, dict[str, tuple[str, str]]]:
    """The acoustic-adjective filter: the offline lexicon, or one LLM yes/no per unique adjective (None: the reply
    was unusable); and per asked word its parse path and why it was unusable (`acoustic_verdict`)."""
    if mode == "lexicon" or llm is None:
        return is_acoustic, {}
    words = words_needing_decision(adjective_lists)
    verdicts = [acoustic_verdict(r) for r in llm.complete_many([acoustic_filter_request(w) for w in words])]
    return {w: v[0] for w, v in zip(words, verdicts)}, {w: v[1:] for w, v in zip(words, verdicts)}


@dataclass
class DescribeMemo:
    """What describing a layer computes that other layers reuse: summaries (and the LLM-reply cleaning each
    needed) by clip set, Module B by (high, low)
    summary pair, Module C by calibrated summary. Each is a pure function of its key under one run's settings,
    so reusing it leaves the records unchanged."""

    summaries: dict[tuple[str, ...], str] = field(default_factory=dict)
    fixes: dict[tuple[str, ...], tuple] = field(default_factory=dict)
    calibrated: dict[tuple[str, str], Calibrated] = field(default_factory=dict)
    opens: dict[tuple[str, ...], OpenConcepts] = field(default_factory=dict)


def describe_layer(
    store: ActivationStore,
    layer: str,
    captions: Mapping[str, str],
    concepts: Sequence[str],
    P: torch.Tensor | None,
    p_is_prob: bool,
    encoder: Any,
    llm: ChatLLM | None,
    dcfg: DictConfig,
    head_layer: str | None,
    memo: DescribeMemo | None = None,
    window_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """Describe every unit of `layer`; returns one record per unit (schema in DESIGN.md). Pass one `memo` to
    all layers of a run so that what they share is computed once. With `window_seconds` the summaries read the
    captions of the windows around each unit's peak frame in its top / bottom clips (`describe/exemplars.py`),
    and each record carries those windows' [start, end] (`top_windows`, `bottom_windows`, parallel to
    `top_clips`, `bottom_clips`)."""
    memo = memo or DescribeMemo()
    k = int(dcfg.k)
    t = store.topk(layer, k)
    units = range(store.layers[layer])
    log.info("layer %s: %d units with ties at the top-%d boundary, %d at the bottom-%d (ordered by %s; left to clip "
             "order: %d, %d)", layer, (t.top_ties > 0).sum(), k, (t.bottom_ties > 0).sum(), k,
             store.tie_break[layer], (t.top_unresolved > 0).sum(), (t.bottom_unresolved > 0).sum())
    windows = ({side: exemplar_windows(store, layer, rows, window_seconds)
                for side, rows in (("top", t.top_rows), ("bottom", t.bottom_rows))}
               if window_seconds is not None else None)
    if windows is None:
        top_sets = [tuple(sorted(t.top_ids[u].tolist())) for u in units]
        low_sets = [tuple(sorted(t.bottom_ids[u].tolist())) for u in units]
    else:
        top_sets, low_sets = ([tuple(sorted(w.id for w in unit)) for unit in windows[side]]
                              for side in ("top", "bottom"))
    summaries, fixes = summarise(top_sets + low_sets, captions, llm, dcfg.summary.min_share,
                                 dcfg.summary.clean_repeats, memo.summaries, memo.fixes)
    pairs = [(summaries[h], summaries[lo]) for h, lo in zip(top_sets, low_sets)]
    new_pairs = [p for p in dict.fromkeys(pairs) if p not in memo.calibrated]
    memo.calibrated.update(zip(new_pairs, calibrate_many(
        new_pairs, encoder, threshold=ORIGINAL_THRESHOLD if dcfg.faithful else dcfg.calibration.threshold,
        min_tokens=dcfg.calibration.min_tokens, faithful=dcfg.faithful)))
    calibrated = [memo.calibrated[p] for p in pairs]
    for c in calibrated:
        if tuple(c.high) not in memo.opens:
            memo.opens[tuple(c.high)] = extract_open_concepts(c.high, acoustic=None,
                                                              window=dcfg.open_concepts.negation_window)
    opens = [memo.opens[tuple(c.high)] for c in calibrated]
    acoustic, acoustic_parse = acoustic_decisions([o.adjectives for o in opens], llm,
                                                  dcfg.open_concepts.acoustic_filter)

    method = dcfg.closed_set.method
    picks = []
    if method == "icl":
        picks = [parse_icl_reply(r, concepts, encoder)
                 for r in llm.complete_many([icl_request(summaries[s], concepts) for s in top_sets])]
        ranked = [[(p.concept, 1.0)] if p.concept else [] for p in picks]
    else:
        S = closed_set_scores(store, layer, P, dcfg, p_is_prob, head_layer)
        ranked = top_concepts(S, concepts, k=int(dcfg.closed_set.top_n), faithful=dcfg.faithful)

    closed_method = f"{method}/{similarity_name(dcfg.closed_set)}" if method != "icl" else "icl"
    records = []
    for u in units:
        cal = calibrated[u]
        description = " ".join(cal.high) or summaries[top_sets[u]]
        o = opens[u]
        adjectives = apply_acoustic_filter(o.adjectives, acoustic)
        records.append({
            "layer": layer, "unit": u,
            "top_clips": t.top_ids[u].tolist(), "top_values": [float(v) for v in t.top_values[u]],
            "bottom_clips": t.bottom_ids[u].tolist(), "bottom_values": [float(v) for v in t.bottom_values[u]],
            "ties": {"statistic": store.tie_break[layer], "top": int(t.top_ties[u]), "bottom": int(t.bottom_ties[u]),
                     "top_by_clip_order": int(t.top_unresolved[u]),
                     "bottom_by_clip_order": int(t.bottom_unresolved[u])},
            "closed_concepts": [{"concept": c, "score": float(s)} for c, s in ranked[u]],
            "closed_method": closed_method,
            "summary_high": summaries[top_sets[u]], "summary_low": summaries[low_sets[u]],
            "calibrated_summary": list(cal.high), "removed_by_calibration": list(cal.removed_high),
            "description": description,
            "adjectives": adjectives, "all_adjectives": o.adjectives, "nouns": o.nouns, "verbs": o.verbs,
            "open_concepts": list(dict.fromkeys(adjectives + o.nouns)),
            "scores": {},
        })
        if windows is not None:
            records[-1].update({f"{side}_windows": [[w.start, w.end] for w in windows[side][u]]
                                for side in ("top", "bottom")})
        if llm is not None:  # which parse path each LLM reply took; unusable ones are skipped with their reason
            parsed = {w: acoustic_parse[w] for w in map(normalise_word, o.adjectives) if w in acoustic_parse}
            records[-1]["llm_parse"] = {
                "summary_high": list(fixes[top_sets[u]]) or ["clean"],
                "summary_low": list(fixes[low_sets[u]]) or ["clean"],
                **({"icl": picks[u].path} if picks else {}), "acoustic_filter": {w: p for w, (p, _) in parsed.items()},
                "skipped": {**({"icl": picks[u].reason} if picks and picks[u].concept is None else {}),
                            **{f"acoustic_filter/{w}": why for w, (p, why) in parsed.items() if p == "unusable"}},
            }
    return records


def llm_parse_counts(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """How many replies took each parse path: summaries (per record and side; a fix per fixed summary), ICL (per
    record) and the acoustic filter (per unique word), from the records' `llm_parse`."""
    counts: dict[str, Counter] = {"summary": Counter(), "icl": Counter(), "acoustic_filter": Counter()}
    words: dict[str, str] = {}
    for r in records:
        p = r.get("llm_parse")
        if not p:
            continue
        counts["summary"].update(p["summary_high"] + p["summary_low"])
        counts["icl"].update([p["icl"]] if "icl" in p else [])
        words.update(p["acoustic_filter"])
    counts["acoustic_filter"].update(words.values())
    return {k: dict(v) for k, v in counts.items()}


def concept_matrix(method: str, captions: Mapping[str, str], clip_ids: Sequence[str], concepts: Sequence[str],
                   encoder: Any, audio_embed: Callable[[], torch.Tensor] | None,
                   scale: float) -> tuple[torch.Tensor | None, bool]:
    """P [N, C] computed once per dataset: DB softmax(scale * cos(caption, concept)), TAB cos(CLAP audio, CLAP
    text of the concept)."""
    if method == "db":
        cap = encoder.encode([captions[c] for c in clip_ids])
        return db_probs(cap, encoder.encode(list(concepts)), scale=scale), True
    if method == "tab":
        return tab_scores_matrix(audio_embed(), encoder.encode(list(concepts))), False
    return None, False


def describe_stage(
    store: ActivationStore,
    captions: Mapping[str, str],
    concepts: Sequence[str],
    encoder: Any,
    llm: ChatLLM | None,
    dcfg: DictConfig,
    out_dir: str | os.PathLike,
    head_layer: str | None,
    audio_embed: Callable[[], torch.Tensor] | None = None,
    window_seconds: float | None = None,
) -> Path:
    """Describe every layer of the store into `out_dir/descriptions.jsonl` (layers already done are reused).
    TAB needs `audio_embed`: () -> CLAP audio embeddings of `store.clip_ids` (`tab_audio_embedder`);
    `window_seconds`: exemplars are windows (see `describe_layer`)."""
    out_dir = Path(out_dir)
    method = dcfg.closed_set.method
    if method == "icl" and llm is None:
        raise ValueError("describe.closed_set.method=icl needs an LLM (llm=openai, hf or smollm2); none is configured")
    require_audio_side(method, encoder)
    P, p_is_prob = None, False
    memo = DescribeMemo()
    lines: list[str] = []
    for layer in tqdm(list(store.layers), desc="describe", unit="layer"):
        path = out_dir / "layers" / f"{layer}.jsonl"
        if not path.is_file():
            if P is None and method != "icl":
                P, p_is_prob = concept_matrix(method, captions, store.clip_ids, concepts, encoder, audio_embed,
                                              dcfg.closed_set.scale)
            records = describe_layer(store, layer, captions, concepts, P, p_is_prob, encoder, llm, dcfg, head_layer,
                                     memo, window_seconds)
            write_text(path, (json.dumps(r) + "\n" for r in records))
        lines.append(path.read_text(encoding="utf-8"))
    out = out_dir / "descriptions.jsonl"
    write_text(out, lines)
    if llm is not None:  # the parse paths of every record's replies, and this run's requests (cache hits, ...)
        stats = {"parse_paths": llm_parse_counts([json.loads(x) for x in "".join(lines).splitlines() if x.strip()]),
                 "requests_this_run": llm.stats.as_dict()}
        write_text(out_dir / "llm_stats.json", json.dumps(stats, indent=1))
        log.info("LLM replies: %s", stats)
    return out


def read_descriptions(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no descriptions yet; run `python dissect.py stage=describe` first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_layer_descriptions(out_dir: str | os.PathLike, layers: Sequence[str]) -> list[dict[str, Any]]:
    """The records of `layers` alone, from the per-layer files `describe_stage` wrote in `out_dir`."""
    return [r for layer in layers for r in read_descriptions(Path(out_dir) / "layers" / f"{layer}.jsonl")]
