"""From Pixels to Tokens: the baseline and four latent-action strategies (config.py, policy.py)."""
