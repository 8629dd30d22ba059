"""Offline latent-action labels: the zarr label store and their join into training samples."""
