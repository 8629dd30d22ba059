"""Closed-loop environments: the synthetic world's simulator and the LIBERO adapter."""
