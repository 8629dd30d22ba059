"""From episodes to batches: the deterministic sample plan, windowing (the one model-input layout, training and acting), the decoder's reader, and the trainer-side clients."""
