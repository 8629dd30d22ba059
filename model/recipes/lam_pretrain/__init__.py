"""LAM pretraining: Moto/LARA, LAPA and UniVLA latent action models (config.py, policy.py)."""
