"""Sparse-autoencoder features as units (issue 16): an SAE trained on a layer's activations, spliced into the model."""
