"""AND-Lightning: Audio Network Dissection with PyTorch Lightning + Hydra."""
import and_lightning.data  # noqa: F401  (registers the config resolvers of conf/, e.g. ${folder_classes:...})
