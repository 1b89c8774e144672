"""Module A (spec §5): closed-set concepts for each neuron, and the last-layer metrics of Table 2.

DB  : P = softmax over concepts of scale * cos(caption_j, concept_c), one row per probing clip, computed
      once per dataset; S = similarity(P, A) over ALL clips for every layer (default cos_cubed).
TAB : P = cos(CLAP audio_j, CLAP text_c), no softmax; S = similarity(P, A) (default soft_wpmi).
ICL : an LLM picks one concept from the neuron's summary (`icl_prompt`); `map_to_concept` maps its free
      answer onto the concept set.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from and_lightning.describe.lexicon import find
from and_lightning.describe.llm.base import ChatRequest
from and_lightning.describe.similarity import SIMILARITIES, similarity
from and_lightning.store.activations import top_clip_index

SimFn = str | Callable[[Tensor, Tensor], Tensor]


class TextEncoderLike(Protocol):
    def encode(self, texts: list[str]) -> Tensor:
        """[len(texts), d] unit-norm embeddings."""


def db_probs(caption_emb: Tensor, concept_emb: Tensor, scale: float = 100.0) -> Tensor:
    """P[j, c] = softmax_c(scale * cos(caption_j, concept_c)): [N, C], each row a distribution."""
    cap = F.normalize(caption_emb.float(), dim=-1)
    con = F.normalize(concept_emb.float(), dim=-1)
    return torch.softmax(scale * cap @ con.T, dim=-1)


def tab_scores_matrix(audio_emb: Tensor, concept_emb: Tensor) -> Tensor:
    """P[j, c] = cos(audio_j, concept_c): [N, C], no softmax (wpmi/soft_wpmi apply their own)."""
    return F.normalize(audio_emb.float(), dim=-1) @ F.normalize(concept_emb.float(), dim=-1).T


def scores_from_p(
    acts: Tensor, P: Tensor, sim_fn: SimFn, *, p_is_prob: bool, faithful: bool = False,
    faithful_top_k: int | None = None, tiebreak: Tensor | None = None, **params,
) -> Tensor:
    """S [M, C] = sim_fn(P [N, C], acts [N, M]) for one layer (all its neurons in one call).

    `sim_fn` is a name in SIMILARITIES (flags passed as needed) or a callable f(P, A) -> S.
    `faithful=True` with a probability P (`p_is_prob`, DB) scores as the original's DB: one call per neuron
    on the clips it stored, in descending activation order: its top `faithful_top_k` clips (hidden layers,
    spec §5.2) or all clips (`faithful_top_k=None`, the head). One neuron per call makes wpmi's marginal
    log p(c) that neuron's own log p(c|n), so wpmi becomes 0.4 log p(c|n) and soft_wpmi exactly 0.
    `tiebreak` [N, M] (the store's tie-break statistic) orders clips of equal activation where a named similarity
    picks top clips (`top_clip_index`); faithful runs use the original's order.
    """
    if acts.ndim != 2 or P.ndim != 2 or acts.shape[0] != P.shape[0]:
        raise ValueError(f"expected acts [N, M] and P [N, C] with the same N, got {tuple(acts.shape)} and {tuple(P.shape)}")
    if faithful_top_k is not None and not faithful:
        raise ValueError("faithful_top_k (top-K-clips-only scoring) is the original's bug; it needs faithful=True")

    def run(P_: Tensor, A_: Tensor) -> Tensor:
        if callable(sim_fn):
            return sim_fn(P_, A_)
        return similarity(sim_fn, P_, A_, p_is_prob=p_is_prob, faithful=faithful, tiebreak=tiebreak, **params)

    if not callable(sim_fn) and sim_fn not in SIMILARITIES:
        raise ValueError(f"unknown similarity {sim_fn!r}; expected one of {sorted(SIMILARITIES)} or a callable")
    acts = acts.float()
    if faithful_top_k is None and not (faithful and p_is_prob):
        return run(P, acts)
    k = acts.shape[0] if faithful_top_k is None else min(faithful_top_k, acts.shape[0])
    idx = top_clip_index(acts, k, faithful=True)  # [k, M]
    return torch.cat([run(P[idx[:, m]], acts[idx[:, m], m:m + 1]) for m in range(acts.shape[1])])


def db_scores(
    acts: Tensor, caption_emb: Tensor, concept_emb: Tensor, sim_fn: SimFn = "cos_cubed", scale: float = 100.0,
    *, faithful: bool = False, faithful_top_k: int | None = None, **params,
) -> Tensor:
    """DB (description-based) scores S [M, C] of one layer over ALL N probing clips.

    P = db_probs(caption_emb, concept_emb, scale) is a probability, so wpmi/soft_wpmi use it as is
    (no second softmax) unless `faithful`. With many layers compute P once with `db_probs` and call
    `scores_from_p(acts, P, sim_fn, p_is_prob=True)` per layer.
    """
    P = db_probs(caption_emb, concept_emb, scale)
    return scores_from_p(acts, P, sim_fn, p_is_prob=True, faithful=faithful, faithful_top_k=faithful_top_k, **params)


def tab_scores(
    acts: Tensor, audio_emb: Tensor, concept_emb: Tensor, sim_fn: SimFn = "soft_wpmi", *, faithful: bool = False, **params
) -> Tensor:
    """TAB scores S [M, C] of one layer: CLAP audio-text cosines P, default soft_wpmi (CLIP-Dissect with CLAP)."""
    P = tab_scores_matrix(audio_emb, concept_emb)
    return scores_from_p(acts, P, sim_fn, p_is_prob=False, faithful=faithful, **params)


def _ranked_concepts(S: Tensor, k: int, faithful: bool) -> Tensor:
    """[M, k] concept indices, best first: ties go to the earlier concept and NaN ranks last; `faithful`:
    `torch.topk`'s order, as the original (NaN ranks first; ties in the kernel's order, e.g. concepts
    35, 32, 33, 34, 31 for a constant row of 50 with torch 2.11 on CPU)."""
    if faithful:
        return torch.topk(S.float(), k, dim=1).indices
    ranked = torch.nan_to_num(S.float(), nan=-float("inf"))
    return torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, :k]


def top_concepts(S: Tensor, concept_names: Sequence[str], k: int = 5,
                 faithful: bool = False) -> list[list[tuple[str, float]]]:
    """Per neuron, its k best concepts as (name, score), best first (order of ties and NaN: `_ranked_concepts`)."""
    if S.ndim != 2 or S.shape[1] != len(concept_names):
        raise ValueError(f"S must be [M, {len(concept_names)}] for {len(concept_names)} concepts, got {tuple(S.shape)}")
    k = min(k, S.shape[1])
    order = _ranked_concepts(S, k, faithful)
    vals = S.float().gather(1, order)
    return [[(concept_names[c], float(v)) for c, v in zip(row_i.tolist(), row_v.tolist())] for row_i, row_v in zip(order, vals)]


# --- last-layer metrics (spec §5.5) ---------------------------------------------------------------------
def concept_cosine(pred_names: Sequence[str], gt_names: Sequence[str], encoder: TextEncoderLike) -> float:
    """Mean over neurons of cos(enc(gt), enc(top-1 prediction)) (Table 2's "Cos"). Names are encoded as
    given (underscores kept, as the original), so an exact match scores 1."""
    if len(pred_names) != len(gt_names) or not pred_names:
        raise ValueError(f"need equally many (>0) predictions and ground truths, got {len(pred_names)} and {len(gt_names)}")
    if any(not isinstance(p, str) for p in pred_names):
        raise TypeError("pred_names must be top-1 strings (the original's TAB bug encoded lists of top-5)")
    p = encoder.encode(list(pred_names))
    g = encoder.encode(list(gt_names))
    return float((F.normalize(p.float(), dim=-1) * F.normalize(g.float(), dim=-1)).sum(dim=-1).mean())


# --- ICL (spec §5.4) ------------------------------------------------------------------------------------
ICL_SCHEMA = {
    "title": "icl_concept",
    "type": "object",
    "properties": {"concept": {"type": "string"}, "reason": {"type": "string"}},
    "required": ["concept", "reason"],
    "additionalProperties": False,
}

# The original's two demonstrations, typos fixed ("car meowing", "Answer: soring"); answers in JSON.
_ICL_DEMOS = [
    (
        "The audio features a cat meowing: All of the clips contain the sound of a cat meowing. Loud sound: "
        "These clips are all of loud sound but with varying degrees of intensity. Repetitive meowing: Clips 1 "
        "and 4 are repetitive, with the cat meowing multiple times in each clip. Poor audio quality: All clips "
        "have poor audio quality, with either distortion, muffling, or apparent background noises.",
        "cat",
        "The description says all of the clips contain the sound of a cat meowing, and 'cat' is a class name.",
    ),
    (
        "They all feature a person snoring loudly. The snoring starts off slow and gets louder over time. The "
        "audio is recorded in mono. There are no other sounds in the background. The snoring is described as "
        "loud and intense. The third clip features a zombie growling and snarling, while the other clips only "
        "feature snoring. The third clip is described as scary and creepy, while the other clips are not.",
        "snoring",
        "Most clips are snoring; 'zombie growling' would fit one clip but is not among the class names, so "
        "the best class name is 'snoring'.",
    ),
]


def icl_request(summary: str, concepts: Sequence[str]) -> ChatRequest:
    """`icl_prompt` as a request whose "concept" must be one of `concepts` (what constrained decoding and servers
    with structured output keep to) and whose reply may be free text (`parse_icl_reply` reads it)."""
    messages, schema = icl_prompt(summary, concepts)
    properties = {**schema["properties"], "concept": {"type": "string", "enum": list(concepts)}}
    return ChatRequest(messages, {**schema, "properties": properties}, kind="icl_concept", text_fallback=True)


def icl_prompt(summary: str, concepts: Sequence[str]) -> tuple[list[dict], dict]:
    """(chat messages, JSON schema) asking an LLM to pick the ONE concept that best matches a neuron's
    high-activation summary. The original's two demonstrations are included when their answers ("cat",
    "snoring") are in the concept set (i.e. ESC-50), otherwise the prompt is zero-shot."""
    names = ", ".join(concepts)
    messages = [{
        "role": "system",
        "content": f"You have a set of class names: {names}\nThe following is a description of some audio clips. "
                   "Based on the description, select the one class name from the set above that matches the "
                   'description best. Reply with a JSON object {"concept": "<one class name from the set>", '
                   '"reason": "<one or two sentences>"}.',
    }]
    for demo, answer, reason in _ICL_DEMOS:
        if answer in concepts:
            messages += [
                {"role": "user", "content": demo},
                {"role": "assistant", "content": json.dumps({"concept": answer, "reason": reason})},
            ]
    messages.append({"role": "user", "content": summary})
    return messages, ICL_SCHEMA


ICL_TEMPLATE = "This is an audio about {}"


def _template_text(name: str) -> str:
    # Underscores become spaces for the text encoder: "water_drops" and a free answer "water drops"
    # should embed alike (the original kept underscores; with the template the effect is small either way).
    return ICL_TEMPLATE.format(name.replace("_", " ").strip())


def _answer_text(answer: dict | str) -> str:
    """The concept a reply names: the schema's "concept" field, else (free text) the last "Answer:" line,
    else the whole text. Quotes and apostrophes never override the answer (the original's parsing bug)."""
    if isinstance(answer, str):
        try:
            answer = json.loads(answer)
        except json.JSONDecodeError:
            tail = re.split(r"answer\s*:", answer, flags=re.IGNORECASE)
            text = tail[-1] if len(tail) > 1 else answer
            return text.strip().splitlines()[0].split(",")[0].strip(" \"'.") if text.strip() else ""
    if isinstance(answer, dict):
        if "concept" not in answer:
            raise ValueError(f"ICL reply has no 'concept' field: {answer!r}")
        return str(answer["concept"]).strip()
    raise TypeError(f"ICL reply must be a dict or a string, got {type(answer).__name__}")


def nearest_concepts(texts: Sequence[str], concepts: Sequence[str], encoder: TextEncoderLike) -> list[tuple[str, float]]:
    """For each text, the concept whose templated embedding is closest: (name, cosine)."""
    q = encoder.encode([_template_text(t) for t in texts])
    c = encoder.encode([_template_text(x) for x in concepts])
    sims = F.normalize(q.float(), dim=-1) @ F.normalize(c.float(), dim=-1).T
    best = sims.argmax(dim=1)
    return [(concepts[i], float(sims[r, i])) for r, i in enumerate(best.tolist())]


@dataclass(frozen=True)
class ICLPick:
    """What an ICL reply gave: the `concept` (None: unusable), which parse `path` read it ("json", "text_answer":
    an "Answer:" line, "text_mention": the first class name the text names, "unusable") and why it is unusable."""

    concept: str | None
    path: str
    reason: str = ""


def _mentions(text: str, concepts: Sequence[str]) -> list[str]:
    """The concepts `text` names (whole words up to inflection, "_" as a space), in the order of their first
    mention (`lexicon.find`)."""
    found = [(i, c) for c in concepts if (i := find(c, text)) is not None]
    return [c for _, c in sorted(found)]


def parse_icl_reply(reply: dict | str, concepts: Sequence[str], encoder: TextEncoderLike) -> ICLPick:
    """The concept of one ICL reply: the JSON "concept" field, else (free text, e.g. a server without structured
    output) an "Answer:" line, else the first class name the text names, each mapped by `map_to_concept`. A text that
    does neither is unusable: the caller records it as skipped."""
    if isinstance(reply, dict):
        return ICLPick(map_to_concept(reply, concepts, encoder), "json")
    if re.search(r"answer\s*:", reply, flags=re.IGNORECASE) and _answer_text(reply):
        return ICLPick(map_to_concept(reply, concepts, encoder), "text_answer")
    named = _mentions(reply, concepts)
    if named:
        return ICLPick(named[0], "text_mention")
    return ICLPick(None, "unusable", f"the reply names no class name and has no 'Answer:' line: {reply[:120]!r}")


def map_to_concept(answer: dict | str, concepts: Sequence[str], encoder: TextEncoderLike) -> str:
    """Map an LLM reply to a concept name: an exact (case/underscore-insensitive) match wins, otherwise
    the nearest concept by cosine of "This is an audio about {x}" embeddings."""
    text = _answer_text(answer)
    key = re.sub(r"[\s_]+", " ", text.lower()).strip()
    for c in concepts:
        if re.sub(r"[\s_]+", " ", c.lower()).strip() == key:
            return c
    return nearest_concepts([text or " "], concepts, encoder)[0][0]
