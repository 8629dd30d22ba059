"""The action tokenizer LA-Tok's VLA predicts (config.py, policy.py)."""
