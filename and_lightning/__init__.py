"""AND-Lightning: Audio Network Dissection with PyTorch Lightning + Hydra."""
