"""Where tensor parallelism meets ZeRO and checkpoints: zero.Init partitions over the data-parallel
group only, and a change of TP or world size goes through the universal form."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lavla.trainer.checkpoint import CheckpointInfo, needs_universal
from lavla.trainer.config import ParallelConfig


@pytest.mark.slow
def test_zero_init_partitions_replicated_weights_over_the_data_parallel_group(tmp_path):
    pytest.importorskip("megatron.core")
    from tp_zero_workers import zero_init_worker

    mp.spawn(zero_init_worker, args=(4, str(tmp_path / "init"), str(tmp_path)), nprocs=4, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(4)]
    assert [(r["layout"].tp_rank, r["layout"].dp_rank) for r in ranks] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    for r in ranks:
        # with the DP group: 2 partitions of 150 (each TP rank's copy split over its 2 replicas)
        assert (r["dp_group"]["local"], r["dp_group"]["group_size"]) == (150, 2)
        # without it (zero.Init ignores DeepSpeed's mpu): split 4 ways, across TP ranks too
        assert (r["world"]["local"], r["world"]["group_size"]) == (75, 4)
        torch.testing.assert_close(r["dp_group"]["full"], ranks[0]["dp_group"]["full"], rtol=0, atol=0)


def _ckpt(world: int, tp: int) -> CheckpointInfo:
    return CheckpointInfo(path=Path("/runs/x/checkpoints/step_00000010"), step=10,
                          state={"world_size": world, "tensor_parallel_size": tp})


def test_any_change_of_tp_or_world_size_goes_through_the_universal_form():
    assert not needs_universal(_ckpt(4, 2), 4, allowed=True, tensor_parallel_size=2)
    assert needs_universal(_ckpt(4, 2), 4, allowed=True, tensor_parallel_size=1)  # TP 2 -> 1, DP 2 -> 4
    assert needs_universal(_ckpt(4, 2), 8, allowed=True, tensor_parallel_size=2)  # DP 2 -> 4 at TP 2
    assert needs_universal(_ckpt(2, 1), 2, allowed=True, tensor_parallel_size=2)  # TP 1 -> 2, same world
    with pytest.raises(RuntimeError, match="convert_on_world_size_change"):
        needs_universal(_ckpt(4, 2), 4, allowed=False, tensor_parallel_size=1)
    assert not needs_universal(_ckpt(2, 1), 2, allowed=False)  # checkpoints without the key are TP=1


def test_parallel_config_checks():
    with pytest.raises(ValueError, match="tensor_parallel_size must be >= 1"):
        ParallelConfig(tensor_parallel_size=0)
    with pytest.raises(ValueError, match="sequence_parallel needs"):
        ParallelConfig(sequence_parallel=True)
