"""Human video: the episode source, PyAV decode/encode, annotation files, and the zarr frame cache with its builder."""
