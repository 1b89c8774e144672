"""Dissect a model: `python dissect.py [stage=collect|caption|describe|report] [model=...] [llm=openai ...]`."""
import hydra
from omegaconf import DictConfig

from and_lightning.cli import check_config, run_cli


@hydra.main(version_base="1.3", config_path="conf", config_name="dissect")
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    from and_lightning.dissection import dissect  # heavy imports once the settings are known to be sound

    dissect(cfg)


if __name__ == "__main__":
    run_cli(main)
