"""LAPA: latent pretraining (stage 2) and action finetuning (stage 3) (config.py, policy.py)."""
