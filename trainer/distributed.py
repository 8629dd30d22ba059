"""Process-group helpers. The only place (with the DeepSpeed engine) that knows about ranks."""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.distributed as dist

from lavla.trainer.jit_ops import prepare_shm_comm_op
from lavla.trainer.ports import free_port, port_in_use_message
from lavla.trainer.waiting import report_while_waiting


def init_distributed() -> None:
    """Join the process group DeepSpeed's launcher set up (gloo on CPU, NCCL on CUDA); a plain
    ``python launcher/pretrain.py`` runs as a world of one. A torch process group made by someone
    else (Ray Train) is adopted: DeepSpeed's communication layer is still set up here, so that the
    shared memory it creates on CPU is released (``deepspeed.initialize`` would create it too)."""
    import deepspeed  # deferred: importing deepspeed probes accelerators (slow)
    import deepspeed.comm as ds_comm

    if ds_comm.is_initialized():
        return
    if not dist.is_initialized():
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port(29500 + os.getpid() % 1000)))
    prepare_shm_comm_op()  # a stale build lock would otherwise stall init_distributed in silence
    env = os.environ
    what = (f"the rendezvous of {env.get('WORLD_SIZE', '?')} ranks at {env.get('MASTER_ADDR', '?')}:"
            f"{env.get('MASTER_PORT', '?')} (this is rank {env.get('RANK', '?')}; are all ranks started?)")
    try:
        with report_while_waiting(what):
            deepspeed.init_distributed(verbose=False)
    except RuntimeError as e:  # torch's DistNetworkError included
        if "EADDRINUSE" in str(e) or "address already in use" in str(e).lower():
            raise PortInUseError(port_in_use_message(env.get("MASTER_PORT", "?"))) from e
        raise
    _unlink_shm_allreduce_buffers()


class PortInUseError(RuntimeError):
    """The rendezvous port is taken (another job on the machine); the message names the fix."""


def _unlink_shm_allreduce_buffers() -> None:
    """Unlink the /dev/shm segments DeepSpeed's CPU shm-allreduce op creates (one ~70 MB file per
    rank, named after MASTER_ADDR/PORT), once every local rank has mapped them.

    DeepSpeed never removes them, so every CPU job left ~70 MB x ranks in /dev/shm (RAM) until the
    machine filled up. Unlinked now, the mappings stay valid and the memory goes back to the system
    when the job's processes exit, however they exit.
    """
    if not dist.is_initialized() or not os.path.isdir("/dev/shm"):
        return
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank()}")
    dist.barrier()  # every rank opened its peers' segments inside init_distributed
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except FileNotFoundError:  # no shm op on this machine (GPU, or ranks on several hosts)
        pass


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank (collective: every rank must call it)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: Sequence[float]) -> list[float]:
    """Average a fixed-length list of floats over ranks (collective)."""
    t = torch.tensor(list(values), dtype=torch.float64)
    if dist.is_initialized() and world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world_size()
    return t.tolist()


def max_over_ranks(values: Sequence[float]) -> list[float]:
    """Element-wise maximum of a fixed-length list of floats over ranks (collective)."""
    t = torch.tensor(list(values), dtype=torch.float64)
    if dist.is_initialized() and world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def broadcast_object(obj: object) -> object:
    """Rank 0's value of ``obj`` on every rank."""
    if not dist.is_initialized() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# Data parallelism. Under tensor parallelism (trainer/tensor_parallel) a model replica spans a TP
# group whose ranks must see the same samples and noise: data is sharded, and per-replica results
# reduced, over the data-parallel group. Without TP that group is the whole world.

def data_parallel_rank() -> int:
    from lavla.trainer.tensor_parallel.mpu import current_layout

    return current_layout().dp_rank


def data_parallel_size() -> int:
    from lavla.trainer.tensor_parallel.mpu import current_layout

    return current_layout().dp_size


def data_parallel_group() -> object | None:
    """The data-parallel process group (None: the whole world)."""
    from lavla.trainer.tensor_parallel.mpu import dp_group

    return dp_group()
