"""The ground-truth evaluate task: description accuracy against the synthetic set's known attributes, per layer
(the accuracy itself is `ground_truth.ground_truth_report`)."""
from __future__ import annotations

from and_lightning.analysis.ground_truth import ground_truth_report
from and_lightning.analysis.plots import real_vs_shuffled_plot
from and_lightning.analysis.task import EvalContext, Table, Task, TaskOutput, TaskSkipped


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
        rows, per_neuron = ground_truth_report(
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
