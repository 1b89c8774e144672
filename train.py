"""Train a target model: `python train.py [model=...] [data=...] [strategy=...]`; prune a trained one (unlearning):
`python train.py mode=unlearn prune=<strategy> prune.target=<class> prune.descriptions=...` (Hydra CLI)."""
import hydra
from omegaconf import DictConfig

from and_lightning.cli import check_config, run_cli


def check_mode(cfg: DictConfig) -> None:
    """`mode` says what the run does; a `prune` strategy (or `then_dissect`) that the mode would not use is refused."""
    pruning = cfg.prune.name != "none"
    if cfg.mode not in ("train", "unlearn"):
        raise ValueError(f"mode={cfg.mode}: expected train (fit a model) or unlearn (prune a trained one)")
    if pruning and cfg.mode == "train":
        raise ValueError(f"prune={cfg.prune.name} needs mode=unlearn (mode=train fits a model and prunes nothing)")
    if cfg.mode == "unlearn" and not pruning:
        raise ValueError("mode=unlearn needs prune=<a strategy in conf/prune> (concept, class, random, ...)")
    if cfg.mode == "unlearn" and cfg.then_dissect:
        raise ValueError("then_dissect=true needs mode=train (it dissects the model a training run exports)")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    check_config(cfg)
    check_mode(cfg)
    if cfg.mode == "unlearn":  # heavy imports once the settings are known to be sound
        from and_lightning.prune.unlearn import unlearn as run
    elif cfg.then_dissect:
        from and_lightning.study import train_and_dissect as run
    else:
        from and_lightning.training import train as run
    return run(cfg).get(cfg.get("optimized_metric") or "", None)


if __name__ == "__main__":
    run_cli(main)
