"""`dissect(cfg)`: collect -> caption -> describe -> report for one model and probing set (stage=... runs one)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from and_lightning.analysis.last_layer import last_layer_accuracy
from and_lightning.checkpoints import build, load_adapter
from and_lightning.describe.captioners.labels import NOT_COMPARABLE
from and_lightning.describe.llm.factory import build_llm
from and_lightning.models.registry import resolve_layers
from and_lightning.sae.fit import check_sae_layers, splice_saes
from and_lightning.stages.caption import caption_stage, read_captions
from and_lightning.stages.collect import collect_activations
from and_lightning.stages.describe import (
    describe_stage, read_descriptions, read_layer_descriptions, require_audio_side, tab_audio_embedder,
)
from and_lightning.stages.evaluate import evaluate_stage, html_report_stage, needs_dissection
from and_lightning.stages.report import report_stage
from and_lightning.store.activations import ActivationStore
from and_lightning.store.atomic import write_json
from and_lightning.store.hashing import hash_obj
from and_lightning.store.kvcache import semantic_config
from and_lightning.tracking import point_wandb_into, public_config, sweep_group

log = logging.getLogger(__name__)
STAGES = ("collect", "caption", "describe", "evaluate", "report")


def load_target(cfg: DictConfig) -> tuple[Any, list[str]]:
    """The model to dissect: `model` as configured, with the weights of `ckpt_path` once its stored model config
    and tensor shapes agree (null: as configured alone); and the class names the checkpoint records (or [])."""
    if not cfg.ckpt_path:
        return build(cfg.model), []
    adapter, ckpt = load_adapter(cfg.ckpt_path, cfg.model, "ckpt_path", missing_checkpoint_hint(cfg))
    return adapter, ckpt["class_names"]


def missing_checkpoint_hint(cfg: DictConfig) -> str:
    """The end of the error for a missing `ckpt_path`: the checkpoints train.py exported for this data and model
    (with the overrides that select them), how to train the one asked for, and `ckpt_path=null`."""
    folder, prefix = Path(cfg.paths.models_dir), f"{cfg.data.name}-{cfg.model.name}-"
    found = []
    for path in sorted(folder.glob(f"{prefix}*.pt")):
        strategy, _, seed = path.stem[len(prefix):].rpartition("-s")
        found.append(f"{path.name} (train_strategy={strategy} train_seed={seed})" if seed.isdigit() else path.name)
    have = (f"; {folder} holds for data={cfg.data.name} model={cfg.model.name}: {', '.join(found)}" if found else
            f"; {folder} holds no checkpoint for data={cfg.data.name} model={cfg.model.name}")
    return (f"{have}. Train one with `python train.py data={cfg.data.name} model={cfg.model.name} "
            f"strategy={cfg.train_strategy} seed={cfg.train_seed}`, or pass ckpt_path=null to dissect "
            f"model={cfg.model.name} as configured (its own or pretrained weights, no training)")


def window_seconds(cfg: DictConfig) -> float | None:
    """`exemplars=window`: the length (seconds) of the windows that stand for a unit's top clips; `exemplars=clip`:
    None (whole clips)."""
    ex = cfg.get("exemplars") or {"kind": "clip"}
    if ex["kind"] not in ("clip", "window"):
        raise ValueError(f"exemplars.kind={ex['kind']!r}: expected clip or window")
    if ex["kind"] == "clip":
        return None
    seconds = ex.get("window_seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ValueError(f"exemplars.window_seconds={seconds!r}: expected a number of seconds > 0")
    return float(seconds)


def dissection_dir(cfg: DictConfig, store: ActivationStore) -> Path:
    """Where this dissection's files live: keyed by the store and every setting that changes descriptions (of the
    backends only their `semantic_config`: never servers, timeouts, retries or cache paths)."""
    semantic = {k: public_config(cfg[k]) if isinstance(cfg.get(k), DictConfig) else cfg.get(k)
                for k in ("captioner", "llm", "text_encoder", "concepts", "describe")}
    semantic.update({k: semantic_config(semantic[k]) for k in ("captioner", "llm", "text_encoder") if semantic[k]})
    if window_seconds(cfg) is not None:  # whole-clip dissections keep the directories they always had
        semantic["window_seconds"] = window_seconds(cfg)
    return Path(cfg.paths.cache_dir) / "dissections" / hash_obj([store.manifest["key"], semantic])[:16]


def dissect(cfg: DictConfig) -> dict[str, Any]:
    """Run the requested stages; returns the metrics and the paths of what was written."""
    if cfg.stage not in ("all", *STAGES):
        raise ValueError(f"stage={cfg.stage}: expected one of all, {', '.join(STAGES)}")
    stages = STAGES if cfg.stage == "all" else (cfg.stage,)
    windows = window_seconds(cfg)
    if "describe" in stages:
        require_audio_side(cfg.describe.closed_set.method, get_class(cfg.text_encoder._target_))
    L.seed_everything(cfg.seed, workers=True)
    if stages == ("evaluate",) and not needs_dissection(cfg.evaluate):  # e.g. CREPE on generated tones
        ev = evaluate_stage(cfg.evaluate, Path(cfg.paths.output_dir) / "evaluate",
                            encoder=instantiate(cfg.text_encoder), captioner=instantiate(cfg.captioner),
                            model_name=cfg.model.name, seed=cfg.seed)
        return _finish(cfg, {"metrics": ev.metrics, "evaluate": {"files": ev.files, "images": ev.images}})
    # the model and its layers before the data: a wrong checkpoint or layer name fails at once
    adapter, class_names = load_target(cfg)
    layers = resolve_layers(adapter, check_sae_layers(cfg.layers) if cfg.get("sae") else cfg.layers)
    head = resolve_layers(adapter, "last")[0]
    data = build(cfg.data)
    records = data.index.folds(cfg.data.predict_folds)
    if cfg.describe.k > len(records):
        raise ValueError(f"describe.k={cfg.describe.k}: expected at most the number of probing clips ({len(records)})")
    class_names = class_names or data.class_names
    collect = lambda model, names: ActivationStore.open(collect_activations(  # noqa: E731
        model, records, data.sample_rate, data.clip_seconds, names, cfg.reduction, cfg.store_dir,
        batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, trainer_kwargs=cfg.trainer,
        top_k=cfg.describe.k, reuse_only="collect" not in stages, pre_activation=cfg.describe.faithful,
        peak_times=windows is not None))
    store = collect(adapter, layers)
    sae_metrics, neurons = {}, {}
    if cfg.get("sae"):  # SAEs on the layers' positions, spliced in: `<layer>.sae` features beside the neurons
        adapter, layers, sae_metrics = splice_saes(cfg, adapter, store.manifest["key"], layers, records,
                                                   data.sample_rate, data.clip_seconds)
        neurons, store = {"neuron_store": str(store.path)}, collect(adapter, layers)
    out = dissection_dir(cfg, store)
    result: dict[str, Any] = {"store": str(store.path), "dissection_dir": str(out), "layers": layers, **neurons}
    label_captions = getattr(get_class(cfg.captioner._target_), "uses_labels", False)
    if label_captions:  # every metric below is computed with captions that name the classes
        result.update(captions="labels", note=NOT_COMPARABLE)
    if stages == ("collect",):
        return _finish(cfg, result)

    by_id = {r.clip_id: r for r in records}
    captions_path = out / "captions.jsonl"
    captioner = instantiate(cfg.captioner)
    if "caption" in stages:
        captions = caption_stage(store, by_id, captioner, Path(cfg.paths.cache_dir) / "captions.sqlite",
                                 captions_path, cfg.describe.k, all_clips=cfg.describe.closed_set.method == "db",
                                 class_names=data.class_names, window_seconds=windows)
    else:
        captions = read_captions(captions_path)
    if stages == ("caption",):
        return _finish(cfg, result)

    encoder = instantiate(cfg.text_encoder)
    encoder.persist(Path(cfg.paths.cache_dir) / "text_embeddings.sqlite", semantic_config(public_config(cfg.text_encoder)))
    audio_embed = tab_audio_embedder(encoder, [by_id[c] for c in store.clip_ids], data.clip_seconds,
                                     out / "tab_audio.npy")
    descriptions_path = out / "descriptions.jsonl"
    llm = build_llm(cfg.llm) if cfg.get("llm") else None  # no llm config (llm: null, llm=none): rule-based
    if "describe" in stages:
        describe_stage(store, captions, list(cfg.concepts.concepts), encoder, llm, cfg.describe, out, head,
                       audio_embed, windows)
    if {"evaluate", "report"} & set(stages):
        descriptions = read_descriptions(descriptions_path)
    else:  # describe alone prints the output layer's accuracy and some hidden units: only those layers are read
        hidden = [name for name in store.layers if name != head]
        descriptions = read_layer_descriptions(out, [name for name in store.layers if name == head] + hidden[:1])
    result["descriptions"] = str(descriptions_path)
    metrics = _last_layer_metrics(descriptions, head, class_names, list(cfg.concepts.concepts), encoder)
    if label_captions and metrics:
        print(f"  ({NOT_COMPARABLE})")
    _print_examples(descriptions, head, cfg.report.print_examples)
    ev = None
    if "evaluate" in stages:
        ev = evaluate_stage(cfg.evaluate, Path(cfg.paths.output_dir) / "evaluate", store=store, records=descriptions,
                            captions=captions, clips=by_id, class_names=class_names,
                            concepts=list(cfg.concepts.concepts), head_layer=head, encoder=encoder, llm=llm,
                            captioner=captioner, split_dir=out, audio_embed=audio_embed, model_name=cfg.model.name,
                            seed=cfg.seed, label_captions=label_captions, model=adapter)
        metrics.update(ev.metrics)
        result["descriptions"] = ev.files["descriptions"]  # the same records, with this run's per-unit scores
        result["evaluate"] = {"files": ev.files, "images": ev.images, "skipped": ev.skipped}
    result["metrics"] = {**sae_metrics, **metrics}
    if "report" in stages:
        sample_rate = store.manifest["preprocessing"]["sample_rate"]
        result["html_report"] = str(html_report_stage(
            cfg.evaluate.html, Path(cfg.paths.output_dir) / "report", descriptions, by_id, captions, sample_rate,
            data.clip_seconds, metrics=metrics, neuron_scores=ev.neuron_scores if ev else None, title=cfg.run_name,
            exemplar_curves=(adapter, cfg.describe.faithful) if windows is not None else None))
        if cfg.get("logger") and cfg.logger.get("wandb"):
            wandb_cfg = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
            point_wandb_into(wandb_cfg["save_dir"])
            wandb_cfg["group"] = wandb_cfg.get("group") or sweep_group()
            run_dir = report_stage(descriptions, by_id, captions, metrics, public_config(cfg), wandb_cfg,
                                   sample_rate, data.clip_seconds, cfg.report.max_rows, cfg.report.audio_per_neuron,
                                   images=ev.images if ev else {})
            result["wandb_run"] = str(run_dir)
    return _finish(cfg, result)


def _last_layer_metrics(descriptions: list[dict], head: str, class_names: list[str], concepts: list[str],
                        encoder: Any) -> dict[str, float]:
    """Table-2 accuracy of the output layer when the concept set names the model's classes."""
    rows = [r for r in descriptions if r["layer"] == head and r["closed_concepts"]]  # none: ICL reply unusable
    if not rows:
        log.info("last-layer accuracy skipped: the output layer '%s' was not dissected or has no concepts", head)
        return {}
    if not set(class_names) <= set(concepts):
        return {}
    acc = last_layer_accuracy([[c["concept"] for c in r["closed_concepts"]] for r in rows],
                              [class_names[r["unit"]] if r["unit"] < len(class_names) else None for r in rows],
                              encoder, n_concepts=len(concepts))
    print(f"last layer '{head}' ({rows[0]['closed_method']}): top-1 {acc['top1']:.1f}%  top-5 {acc['top5']:.1f}%  "
          f"cos {acc['cos']:.3f}  over {acc['units']} units")
    return {f"dissect/last_layer_{k}": acc[k] / (1 if k == "cos" else 100) for k in ("top1", "top5", "cos")}


def _print_examples(descriptions: list[dict], head: str, n: int) -> None:
    """A few real output lines: some hidden units and some output units."""
    hidden = [r for r in descriptions if r["layer"] != head][:n]
    for r in hidden + [r for r in descriptions if r["layer"] == head][:n]:
        concepts = ", ".join(c["concept"] for c in r["closed_concepts"][:3])
        print(f"{r['layer']}#{r['unit']}: {r['description']} | concepts: {concepts} | adjectives: "
              f"{', '.join(r['adjectives'])}")


def _finish(cfg: DictConfig, result: dict[str, Any]) -> dict[str, Any]:
    """Record what was written in the run directory."""
    write_json(Path(cfg.paths.output_dir) / "dissection.json", result)
    log.info("dissection written: %s", json.dumps({k: v for k, v in result.items() if k in ("store", "dissection_dir", "descriptions", "html_report", "wandb_run")}))
    return result
