"""Audio datasets. Importing the package (and so `and_lightning`) registers the config resolvers that read a
dataset folder: `${folder_classes:<root>}` (its class names, label order), `${len:<list>}` and
`${union:<list>,<list>,...}` (order kept, duplicates dropped); conf/data/folder.yaml and conf/concepts/folder.yaml."""
from omegaconf import OmegaConf


def _folder_classes(root: str) -> list[str]:
    from and_lightning.data.datasets import folder_classes  # imports torch: only when a config asks

    return folder_classes(root)


def _union(*lists: list) -> list:
    return list(dict.fromkeys(item for items in lists for item in items))


OmegaConf.register_new_resolver("folder_classes", _folder_classes, replace=True)
OmegaConf.register_new_resolver("len", len, replace=True)
OmegaConf.register_new_resolver("union", _union, replace=True)
