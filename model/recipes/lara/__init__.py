"""LARA: joint LAM + flow-matching DiT action head (config.py, policy.py)."""
