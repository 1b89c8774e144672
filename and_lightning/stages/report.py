"""Stage 5 (W&B part): one offline W&B run per dissection with the neuron table, top clips playable."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import wandb

from and_lightning.data.audio_io import fix_length, load_audio
from and_lightning.data.clips import ClipRecord

log = logging.getLogger(__name__)


def neuron_table(records: Sequence[dict[str, Any]], clips: Mapping[str, ClipRecord], captions: Mapping[str, str],
                 sample_rate: int, clip_seconds: float, audio_per_neuron: int) -> wandb.Table:
    """Rows: layer, unit, description, closed concepts, adjectives, nouns, then each top clip and its caption."""
    columns = ["layer", "unit", "description", "closed_concepts", "adjectives", "nouns"]
    for i in range(audio_per_neuron):
        columns += [f"top{i + 1}_audio", f"top{i + 1}_caption"]
    n = int(round(clip_seconds * sample_rate))
    audio: dict[str, wandb.Audio] = {}

    def player(cid: str) -> wandb.Audio:
        if cid not in audio:
            wave, _ = load_audio(clips[cid].path, sample_rate)
            audio[cid] = wandb.Audio(fix_length(wave, n).numpy(), sample_rate=sample_rate, caption=cid)
        return audio[cid]

    table = wandb.Table(columns=columns)
    for r in records:
        row = [r["layer"], r["unit"], r["description"], ", ".join(c["concept"] for c in r["closed_concepts"][:3]),
               ", ".join(r["adjectives"]), ", ".join(r["nouns"][:8])]
        for cid in r["top_clips"][:audio_per_neuron]:
            row += [player(cid), captions.get(cid, "")]
        row += [None, ""] * (audio_per_neuron - len(r["top_clips"][:audio_per_neuron]))
        table.add_data(*row)
    return table


def report_stage(records: Sequence[dict[str, Any]], clips: Mapping[str, ClipRecord], captions: Mapping[str, str],
                 metrics: Mapping[str, float], config: dict[str, Any], wandb_cfg: Mapping[str, Any],
                 sample_rate: int, clip_seconds: float, max_rows: int, audio_per_neuron: int,
                 images: Mapping[str, str] | None = None) -> Path:
    """Log the neuron table (first `max_rows` neurons), the metrics and the evaluation plots (PNG paths) to a
    W&B run; returns the run's folder."""
    save_dir = Path(wandb_cfg["save_dir"])
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=wandb_cfg["project"], name=wandb_cfg.get("name"), group=wandb_cfg.get("group"),
                     tags=list(wandb_cfg.get("tags") or []), job_type="dissect", dir=str(save_dir), config=config,
                     mode=wandb_cfg.get("mode", "offline"))
    try:
        run.log({"neurons": neuron_table(records[:max_rows], clips, captions, sample_rate, clip_seconds,
                                         audio_per_neuron), **metrics,
                 **{f"eval/{k}": wandb.Image(p) for k, p in (images or {}).items()}})
        run.summary.update(dict(metrics))
        return Path(run.dir).parent
    finally:
        run.finish()
