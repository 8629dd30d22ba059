"""Tensor and sequence parallelism with megatron-core, composed with DeepSpeed ZeRO.

A model is built exactly as at TP=1 (``model/`` holds no process-group code); ``parallelize``
then turns its parts into their TP form: the Hugging Face language model becomes a megatron-core
transformer (``qwen3``), the DiT action head takes megatron's parallel linears (``dit``). The
vision tower and the LAM stay replicated under ZeRO. ``mpu`` hands megatron's process groups to
DeepSpeed, ``grad_sync`` sums the TP-partial gradients of replicated weights, ``consolidate``
writes TP shards back as TP=1 weights (export), ``reshard`` cuts a checkpoint to another TP x DP
layout through its canonical TP=1 universal form (resume). ``cpu_shim`` lets all of it run on CPU
(gloo) for tests.
"""
