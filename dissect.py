"""Dissect a model: `python dissect.py [stage=collect|caption|describe|report] [model=...] [llm=openai ...]`."""
import hydra
from omegaconf import DictConfig

from and_lightning.dissection import dissect


@hydra.main(version_base="1.3", config_path="conf", config_name="dissect")
def main(cfg: DictConfig) -> None:
    dissect(cfg)


if __name__ == "__main__":
    main()
