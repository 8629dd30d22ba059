"""One module per training recipe; each exposes ``forward(batch) -> (loss, metrics)``."""
