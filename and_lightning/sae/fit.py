"""Train an SAE on a layer's activations (a Lightning module around sae-lens' training step) and splice it in.

The activation store keeps one pooled value per (clip, unit); an SAE that is spliced into the model acts on every
position (conv cell, frame, token), so it trains on the positions themselves: one extra forward pass over the
probing clips records the layer's output (before its activation, where the splice sits) and keeps a seeded random
subset of positions, 10% of them held out. Logged per epoch (W&B when `logger=wandb`): reconstruction loss (MSE),
fraction of variance unexplained, L0 (active features per position) and the fraction of dead features. The SAE
is cached by everything it depends on (the store's key, the layer and the `sae` settings), so re-runs reuse it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from and_lightning.data.clips import ClipDataset, ClipRecord
from and_lightning.models.base import TargetAdapter, unit_dim
from and_lightning.sae.model import SparseAutoencoder, sae_settings
from and_lightning.sae.splice import SUFFIX, SplicedAdapter, is_sae_layer
from and_lightning.store.atomic import write_json
from and_lightning.store.hashing import hash_obj
from and_lightning.tracking import build_loggers, finish_wandb

log = logging.getLogger(__name__)
POSITIONS = "streamed-random-keys"  # how training positions are chosen (in the cache key: a change retrains)


def check_sae_layers(spec: Any) -> list[str]:
    """The layers an SAE is asked for: explicit names only (ValueError naming `layers` otherwise)."""
    names = [spec] if isinstance(spec, str) else list(spec)
    bad = [n for n in names if n in ("all", "last") or any(c in str(n) for c in "*?[") or str(n).endswith(SUFFIX)]
    if bad or not names:
        raise ValueError(f"layers={OmegaConf.to_container(spec) if isinstance(spec, DictConfig) else spec}: with "
                         f"`sae` set, name the layers to train SAEs on (e.g. layers=[conv4]), not {bad or 'nothing'}")
    return [str(n) for n in names]


@torch.inference_mode()
def layer_positions(adapter: TargetAdapter, records: Sequence[ClipRecord], sample_rate: int, clip_seconds: float,
                    layer: str, batch_size: int, max_tokens: int, seed: int) -> torch.Tensor:
    """float32 [tokens, units]: the output of `layer` at every position of every clip (module output, before the
    layer's activation), in clip order; at most `max_tokens` of them, a seeded uniform random subset kept while
    streaming (each position gets a random key, the `max_tokens` largest keys stay), so memory is bounded by
    twice `max_tokens` plus one batch whatever the number of clips."""
    module, gen = adapter.layer_module(layer), torch.Generator().manual_seed(seed)
    pool: dict[str, list[torch.Tensor]] = {"rows": [], "keys": [], "index": []}
    seen = 0

    def keep_best(limit: int) -> None:  # the `limit` positions with the largest keys stay, as one chunk each
        parts = {name: torch.cat(chunks) for name, chunks in pool.items()}
        best = parts["keys"].topk(min(limit, len(parts["keys"]))).indices
        pool.update({name: [part[best]] for name, part in parts.items()})

    def hook(m: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
        nonlocal seen
        rows = out.detach().movedim(unit_dim(m), -1).reshape(-1, out.shape[unit_dim(m)]).float().cpu()
        pool["rows"].append(rows)
        pool["keys"].append(torch.rand(len(rows), generator=gen))
        pool["index"].append(torch.arange(seen, seen + len(rows)))
        seen += len(rows)
        if sum(map(len, pool["keys"])) > 2 * max_tokens:
            keep_best(max_tokens)

    handle = module.register_forward_hook(hook)
    try:
        adapter.eval()
        for batch in DataLoader(ClipDataset(records, sample_rate, clip_seconds), batch_size=batch_size):
            adapter.run(batch["audio"], batch.get("length"))
    finally:
        handle.remove()
    keep_best(max_tokens)
    (rows,), (index,) = pool["rows"], pool["index"]
    return rows[index.argsort()]


class SAEModule(L.LightningModule):
    """Trains `sae` with sae-lens' `training_forward_pass`; a feature that fired on none of the last `dead_after`
    training positions is dead (it gets the TopK auxiliary loss)."""

    def __init__(self, sae: SparseAutoencoder, lr: float, dead_after: int):
        super().__init__()
        self.sae, self.lr, self.dead_after = sae, lr, dead_after
        self.register_buffer("since_fired", torch.zeros(sae.d_sae, dtype=torch.long))
        self.final: dict[str, float] = {}

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        from sae_lens.saes.sae import TrainStepInput

        x = batch[0]
        dead = self.since_fired >= self.dead_after
        out = self.sae.sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=self.global_step,
            is_logging_step=False))
        with torch.no_grad():
            self.since_fired += len(x)
            self.since_fired[(out.feature_acts > 0).any(dim=0)] = 0
        self.log_dict({"sae/train_loss": out.loss, "sae/train_mse": out.losses["mse_loss"],
                       "sae/train_fvu": fvu(x, out.sae_out), "sae/train_dead_fraction": dead.float().mean()},
                      on_step=False, on_epoch=True)
        return out.loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x = batch[0]  # one batch: every held-out position, codes as the splice computes them (eval mode)
        codes = self.sae.encode(x)
        recon = self.sae.decode_delta(codes) + self.sae.sae.b_dec
        self.final = {"sae/mse": float(((recon - x) ** 2).sum(-1).mean()), "sae/fvu": float(fvu(x, recon)),
                      "sae/l0": float((codes > 0).sum(-1).float().mean()),
                      "sae/dead_fraction": float((codes > 0).sum(0).eq(0).float().mean())}
        self.log_dict(self.final)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.sae.parameters(), lr=self.lr)


def fvu(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: squared error / squared deviation from the mean position."""
    return ((recon - x) ** 2).sum() / ((x - x.mean(dim=0)) ** 2).sum().clamp_min(1e-12)


def fit_sae(cfg: DictConfig, adapter: TargetAdapter, store_key: str, layer: str, records: Sequence[ClipRecord],
            sample_rate: int, clip_seconds: float) -> tuple[SparseAutoencoder, dict[str, float]]:
    """The SAE of `layer` under `cfg.sae` (trained, or the cached one) and its held-out metrics."""
    sc = cfg.sae
    settings = sae_settings(sc, adapter.layers()[layer])
    train = {k: sc[k] for k in ("lr", "epochs", "batch_size", "max_tokens", "dead_after", "seed")}
    folder = Path(cfg.paths.cache_dir) / "sae" / hash_obj([store_key, layer, settings, train, POSITIONS])[:16]
    if (folder / "sae.pt").is_file():
        log.info("SAE of %s: reusing %s", layer, folder)
        return SparseAutoencoder.load(folder / "sae.pt"), json.loads((folder / "metrics.json").read_text())
    L.seed_everything(sc.seed, workers=True)
    tokens = layer_positions(adapter, records, sample_rate, clip_seconds, layer, cfg.data.batch_size,
                             sc.max_tokens, sc.seed)
    held = max(1, len(tokens) // 10)
    order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(sc.seed))
    val, fit = tokens[order[:held]], tokens[order[held:]]
    sae = SparseAutoencoder(**settings)
    module = SAEModule(sae, sc.lr, sc.dead_after)
    loggers = build_loggers(OmegaConf.merge(cfg, {"run_name": f"{cfg.run_name}-sae-{layer}", "task_name": "sae"}))
    trainer = L.Trainer(max_epochs=sc.epochs, accelerator=cfg.trainer.get("accelerator", "auto"), devices=1,
                        logger=loggers or False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        deterministic=True)
    gen = torch.Generator().manual_seed(sc.seed)
    try:
        trainer.fit(module, DataLoader(TensorDataset(fit), batch_size=sc.batch_size, shuffle=True, generator=gen),
                    DataLoader(TensorDataset(val), batch_size=len(val)))
    finally:
        finish_wandb()
    metrics = {**module.final, "sae/features": settings["d_sae"], "sae/k": settings["k"],
               "sae/train_positions": len(fit), "sae/heldout_positions": len(val)}
    write_json(folder / "metrics.json", {**metrics, "layer": layer, **settings, **train})
    sae.eval().cpu().save(folder / "sae.pt")  # last: its presence marks a complete cache entry
    log.info("SAE of %s trained: %s", layer, metrics)
    return sae, metrics


def splice_saes(cfg: DictConfig, adapter: TargetAdapter, store_key: str, layers: Sequence[str],
                records: Sequence[ClipRecord], sample_rate: int, clip_seconds: float
                ) -> tuple[SplicedAdapter, list[str], dict[str, float]]:
    """An SAE per layer of `layers`, spliced in: (the spliced adapter, `layers` + their `<layer>.sae`, metrics)."""
    saes, metrics = {}, {}
    for layer in layers:
        saes[layer], m = fit_sae(cfg, adapter, store_key, layer, records, sample_rate, clip_seconds)
        metrics.update({f"{k}/{layer}": v for k, v in m.items() if isinstance(v, (int, float))})
    spliced = SplicedAdapter(adapter, saes)
    chosen = [n for n in spliced.layer_paths() if n in layers or is_sae_layer(n) and n[:-len(SUFFIX)] in layers]
    return spliced, chosen, metrics
