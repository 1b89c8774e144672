"""Train a target model: `python train.py [model=...] [data=...] [strategy=...]` (Hydra CLI)."""
import hydra
from omegaconf import DictConfig

from and_lightning.cli import check_config, run_cli


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    check_config(cfg)
    from and_lightning.study import train_and_dissect  # heavy imports once the settings are known to be sound
    from and_lightning.training import train

    metrics = train_and_dissect(cfg) if cfg.get("then_dissect") else train(cfg)
    return metrics.get(cfg.get("optimized_metric") or "", None)


if __name__ == "__main__":
    run_cli(main)
