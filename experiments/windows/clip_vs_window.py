"""Whole clips vs windows as exemplars on two-event clips (issue 16): how often a unit's description names the event
at its peak vs the clip's other event.

    python train.py data=synth_two_event data.index.clips_per_class=30
    python experiments/windows/clip_vs_window.py data=synth_two_event data.index.clips_per_class=30 \\
        [exemplars.window_seconds=0.5]

Dissects the model (stages collect, caption, describe; every stage cached) twice, with exemplars=clip and with
exemplars=window, and scores both sets of descriptions, and the captions they were made from (each top clip's, or
its window's), on the peak times of the window run (`analysis/peak_events.py`: what the share measures and why it
flatters an offline captioner built around the synthetic classes). Writes `clip_vs_window.csv` / `.md`,
`clip_vs_window.png` (descriptions) and `clip_vs_window_captions.png` in the run directory.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from and_lightning.cli import check_config, run_cli  # noqa: E402

COLUMNS = ["layer", "judged", "exemplars", "pairs", "peak_in_silence", "names_peak", "names_other", "names_both",
           "names_neither"]


@hydra.main(version_base="1.3", config_path="../../conf", config_name="dissect")
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    from and_lightning.analysis.peak_events import peak_event_naming
    from and_lightning.analysis.plots import peak_event_plot, save_png
    from and_lightning.analysis.tables import write_table
    from and_lightning.checkpoints import build
    from and_lightning.data.windows import Window
    from and_lightning.dissection import dissect
    from and_lightning.stages.caption import read_captions
    from and_lightning.stages.describe import read_descriptions
    from and_lightning.store.activations import ActivationStore

    if cfg.data.name != "synth_two_event":
        raise ValueError(f"data={cfg.data.name}: this comparison needs the two-event clips (data=synth_two_event)")
    seconds = cfg.exemplars.window_seconds or 0.5
    results = {}
    for kind in ("clip", "window"):
        run = cfg.copy()
        with open_dict(run):
            run.exemplars = {"kind": kind, "window_seconds": seconds if kind == "window" else None}
        for stage in ("collect", "caption", "describe"):
            run.stage = stage
            results[kind] = dissect(run)
    store = ActivationStore.open(results["window"]["store"])
    peaks = {layer: store.peak(layer) for layer in store.layers}
    clips = {r.clip_id: r for r in build(cfg.data).index.records}
    row_of = {c: store.row_of(c) for c in store.clip_ids}
    captions = {kind: read_captions(Path(results[kind]["dissection_dir"]) / "captions.jsonl") for kind in results}
    exemplar = {"clip": lambda r, i: r["top_clips"][i],
                "window": lambda r, i: Window(r["top_clips"][i], *r["top_windows"][i]).id}
    rows = []
    for kind in ("clip", "window"):
        records = read_descriptions(results[kind]["descriptions"])
        judged = {"description": lambda r, i: r["description"],
                  "caption": lambda r, i, kind=kind: captions[kind][exemplar[kind](r, i)]}
        rows += [{"judged": what, "exemplars": kind, **row} for what, text in judged.items()
                 for row in peak_event_naming(records, peaks, row_of, clips, text)]
    rows.sort(key=lambda r: (r["judged"] != "description", list(store.layers).index(r["layer"]), r["exemplars"]))
    out = Path(cfg.paths.output_dir)
    written = write_table(rows, COLUMNS, out / "clip_vs_window", f"Descriptions and captions naming the event at "
                          f"the unit's peak: whole clips vs {seconds} s windows")
    for what, name in (("description", "clip_vs_window"), ("caption", "clip_vs_window_captions")):
        save_png(peak_event_plot([r for r in rows if r["judged"] == what], f"share of pairs whose {what} names it"),
                 out / f"{name}.png")
    print(Path(written["md"]).read_text(encoding="utf-8"))


if __name__ == "__main__":
    run_cli(main)
