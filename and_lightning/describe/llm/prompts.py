"""The LLM's commonality summary of a neuron's K most (or least) activating clips' captions: the original's prompt
(spec §6). Without an LLM the summary is rule-based (`describe.rule_summary`)."""
from __future__ import annotations

from typing import Sequence

from and_lightning.describe.sentences import clean_repeated_caption

SUMMARY_SYSTEM_PROMPT = (
    "Here are descriptions of some audio clips. Please summarize these descriptions by identifying "
    "their commonalities."
)


def summary_messages(captions: Sequence[str], clean: bool = True) -> list[dict]:
    """Chat messages for the original's commonality summary: the system instruction, then the captions
    (after the 8-gram repetition cleaning unless `clean=False`) joined by newlines, as in the original.
    The same prompt serves the highly and the lowly activating sets; no label or activation is shown."""
    if not captions:
        raise ValueError("summary_messages needs at least one caption")
    texts = [clean_repeated_caption(c) if clean else c for c in captions]
    return [
        {"role": "system", "content": SUMMARY_SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(t.strip() for t in texts)},
    ]
