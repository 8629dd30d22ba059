"""Configs of the VLA recipes on a VLM backbone: Pixels-to-Tokens (baseline, la_align, la_direct,
la_cond, la_tok) and LAPA (lapa_latent, lapa_action)."""
