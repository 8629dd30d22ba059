"""Throughput benchmarks (not library code): our reader vs tf.data/TFDS, and the data service vs an OpenVLA-style pipeline."""
