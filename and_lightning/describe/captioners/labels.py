"""Labels as captions (Network Dissection's use of labelled probing sets): each clip's caption is a sentence naming
its class, followed by the caption of a wrapped acoustic captioner ("A recording of dog. It is a loud noise ...").

Hidden units of a model trained on labelled recordings then get descriptions that name sound sources offline. Any
number computed from these captions measures the labels as much as the descriptions: dissection.json,
evaluation.json and the last-layer table mark it (`captions: labels`, NOT_COMPARABLE) — it is not comparable to the
paper's Table 2.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from and_lightning.describe.captioners.base import Captioner, Clip, FitsProbingSet

NOT_COMPARABLE = "captions name each clip's class label: not comparable to the paper's Table 2"


class LabelCaptioner(Captioner):
    """`template` (with `{label}`, the class name with '_' read as a space) + the `acoustic` captioner's caption.
    Around a captioner fitted to the probing set (FitsProbingSet) it is a FittedLabelCaptioner, which is too."""

    name = "labels"
    uses_labels = True
    semantic_fields = ("acoustic", "template")

    def __new__(cls, acoustic: Captioner, *args: Any, **kwargs: Any) -> "LabelCaptioner":
        if cls is LabelCaptioner and isinstance(acoustic, FitsProbingSet):
            cls = FittedLabelCaptioner
        return super().__new__(cls)

    def __init__(self, acoustic: Captioner, template: str = "A recording of {label}.", data_name: str = "?"):
        if "{label}" not in template:
            raise ValueError(f"captioner.template: expected a text with '{{label}}', got {template!r}")
        self.acoustic, self.template, self.data_name = acoustic, template, data_name
        self.model = f"labels+{acoustic.name}:{acoustic.model}"

    @property
    def prompt(self) -> str:  # the wrapped captioner's prompt may change once it is fitted to the probing set
        return self.acoustic.prompt

    def params(self) -> dict:
        return {"template": self.template, "acoustic": self.acoustic.params()}

    def label_sentence(self, clip: Clip) -> str:
        if clip.label is None:
            raise ValueError(f"captioner=labels: probing clip '{clip.clip_id}' has no class label; data="
                             f"{self.data_name} must give every probing clip a class (e.g. data=folder: one "
                             "subfolder per class)")
        return self.template.format(label=clip.label.replace("_", " "))

    def caption(self, clips: list[Clip]) -> list[str]:
        heads = [self.label_sentence(c) for c in clips]  # every label is checked before any audio is captioned
        return [f"{h} {c}" for h, c in zip(heads, self.acoustic.caption(clips))]


class FittedLabelCaptioner(LabelCaptioner):
    """A LabelCaptioner around a captioner fitted to the probing set (FitsProbingSet): fitting goes to it."""

    def reference_ids(self, clip_ids: Sequence[str]) -> list[str]:
        return self.acoustic.reference_ids(clip_ids)

    def fit_reference(self, clips: Iterable[Clip]) -> dict[str, Any]:
        return self.acoustic.fit_reference(clips)

    def use_reference(self, reference: Mapping[str, Any]) -> None:
        self.acoustic.use_reference(reference)
