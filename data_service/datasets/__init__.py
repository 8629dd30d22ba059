"""What a dataset is: the registry of known datasets, specs (registered or inline YAML), standardization of raw episodes, Open X-Embodiment mixtures, and ``lavla-data inspect``."""
