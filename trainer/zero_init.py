"""Building the model partitioned at construction (``trainer.zero_init``, ZeRO-3).

``deepspeed.zero.Init`` partitions each parameter as its module's ``__init__`` returns. A Hugging
Face backbone then needs transformers to know: its weight init indexes rows of an embedding and its
loader writes whole tensors, both of which meet empty shards. transformers handles ZeRO-3 (init
and load inside ``GatheredParameters``, embedding resizes too) when an ``HfDeepSpeedConfig`` is
alive, so one is held for the construction only; transformers' own nested ``zero.Init`` defers to
the outer one, which carries the data-parallel group.

Under TP, transformers still assumes global rank 0 sits in every parameter's group: it inits and
loads on global rank 0 only, so the data-parallel groups of the other TP ranks keep uninitialized
shards. Every TP rank builds the same (TP=1) model and ZeRO cuts it the same way in every
data-parallel group, so the shard of TP rank 0 at the same data-parallel rank is the right one:
:func:`copy_shards_from_first_tp_rank` broadcasts it across the TP group.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@contextlib.contextmanager
def partitioned_construction(ds_config: dict[str, Any], mpu: Any = None,
                             data_parallel_group: Any = None) -> Iterator[None]:
    """Build inside this to partition at construction over ``data_parallel_group``."""
    import deepspeed

    with _transformers_knows_zero3(ds_config), deepspeed.zero.Init(
            config_dict_or_path=ds_config, mpu=mpu, data_parallel_group=data_parallel_group):
        yield


@contextlib.contextmanager
def _transformers_knows_zero3(ds_config: dict[str, Any]) -> Iterator[None]:
    try:
        from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config
    except ImportError:  # no Hugging Face backbone can be built either
        yield
        return
    # transformers opens a zero.Init of its own from this config, without the mpu: DeepSpeed would
    # check the global batch against the whole world rather than the data-parallel ranks, so the
    # global batch is left for it to derive. (The outer zero.Init's partitioning applies.)
    config = {k: v for k, v in ds_config.items() if k != "train_batch_size"}
    # transformers keeps only a weak reference: this local keeps it alive for the construction.
    hf_deepspeed_config = HfDeepSpeedConfig(config)
    try:
        with _mean_resizing_gathers_the_new_rows():
            yield
    finally:
        unset_hf_deepspeed_config()  # later from_pretrained calls (export, evaluation) load whole
        del hf_deepspeed_config


@contextlib.contextmanager
def _mean_resizing_gathers_the_new_rows() -> Iterator[None]:
    """transformers (5.x) gathers only the *old* embedding / LM head around the mean-resizing of
    added tokens, then writes the new rows into the new layer's empty shard (IndexError). The
    backbone adds its placeholder token this way, so the new layer is gathered too (modifier rank 0
    of its data-parallel group broadcasts the rows) for the duration of the construction."""
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    from transformers import PreTrainedModel

    names = ("_init_added_embeddings_weights_with_mean", "_init_added_lm_head_weights_with_mean",
             "_init_added_lm_head_bias_with_mean")
    originals = {name: getattr(PreTrainedModel, name) for name in names}

    def gathering(original: Any) -> Any:
        def init_added_rows(self: Any, old: nn.Module, new: nn.Module, *args: Any) -> Any:
            # the LM-head variant calls the embedding one: gather what is not gathered yet
            pending = [p for p in new.parameters() if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
            with deepspeed.zero.GatheredParameters(pending, modifier_rank=0):
                return original(self, old, new, *args)

        return init_added_rows

    for name, original in originals.items():
        setattr(PreTrainedModel, name, gathering(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(PreTrainedModel, name, original)


def copy_shards_from_first_tp_rank(model: nn.Module, tp_group: Any) -> int:
    """Broadcast every ZeRO-3 shard of ``model`` from TP rank 0 to the other TP ranks (before
    ``parallelize``, while the model is still the TP=1 one on every rank). Returns the elements
    this rank received."""
    src = dist.get_global_rank(tp_group, 0)
    received = 0
    for p in model.parameters():
        shard = getattr(p, "ds_tensor", None)
        if shard is None:
            raise RuntimeError(f"a parameter of shape {tuple(p.shape)} was not partitioned by zero.Init; "
                               "build every parameter inside trainer.zero_init's construction")
        dist.broadcast(shard.data, src=src, group=tp_group)
        received += shard.numel()
    return received
