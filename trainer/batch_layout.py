"""How a global batch is laid out over the ranks of a job: micro batch x accumulation x world.

A fixed-size job takes the configured layout or fails (an indivisible config is a mistake). An
elastic job cannot choose its world size, so with ``trainer.batch_layout=nearest`` the layout
adapts to whatever size the job gets, in this order of preference:

1. the configured global batch and micro batch, with accumulation making up the difference;
2. the configured global batch with a smaller micro batch (the largest that divides the ranks'
   share), so the optimizer sees exactly the configured batch;
3. the nearest global batch the world size divides (the closer of the multiples below and above;
   the smaller one on a tie, to keep memory within what was planned).

The sample plan counts global samples, so a changed global batch keeps the sample sequence: the
next step simply takes the next ``global_batch_size`` samples of the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

LAYOUT_POLICIES = ("exact", "nearest")


@dataclass(frozen=True)
class BatchLayout:
    """One valid layout: ``micro_batch_size x grad_accum x world_size == global_batch_size``."""

    global_batch_size: int
    """Samples per optimizer step across all ranks."""
    micro_batch_size: int
    """Samples per rank per forward pass."""
    grad_accum: int
    """Micro batches per optimizer step on each rank."""
    world_size: int
    """Ranks of the job."""
    change: str = ""
    """Empty when this is the configured layout; else what was changed and why (for the log)."""

    def describe(self) -> str:
        return (f"{self.world_size} rank(s) x micro {self.micro_batch_size} x accum {self.grad_accum} "
                f"= global {self.global_batch_size}")


class BatchLayoutError(ValueError):
    """The configured batch does not fit this world size and the policy forbids adapting it."""


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def batch_layout(global_batch: int, micro_batch: int, world_size: int, policy: str = "exact") -> BatchLayout:
    """The layout of ``global_batch`` samples over ``world_size`` ranks (see the module docstring)."""
    if policy not in LAYOUT_POLICIES:
        raise BatchLayoutError(f"trainer.batch_layout must be one of {LAYOUT_POLICIES}, got {policy!r}")
    if min(global_batch, micro_batch, world_size) < 1:
        raise BatchLayoutError(f"global batch {global_batch}, micro batch {micro_batch} and world size "
                               f"{world_size} must all be >= 1")
    per_step = micro_batch * world_size
    if global_batch % per_step == 0:
        return BatchLayout(global_batch, micro_batch, global_batch // per_step, world_size)
    if policy == "exact":
        raise BatchLayoutError(
            f"trainer.global_batch_size={global_batch} is not a multiple of trainer.micro_batch_size={micro_batch} "
            f"x world size {world_size}; change the sizes, or set trainer.batch_layout=nearest to let the job "
            "pick the nearest valid layout (what elastic jobs do)")
    if global_batch % world_size == 0:
        share = global_batch // world_size
        micro = _largest_divisor_at_most(share, micro_batch)
        return BatchLayout(global_batch, micro, share // micro, world_size,
                           change=f"micro batch {micro_batch} -> {micro}: {world_size} rank(s) share a global batch "
                                  f"of {global_batch} as {share} samples each")
    below = (global_batch // world_size) * world_size
    above = below + world_size
    nearest = above if below == 0 or above - global_batch < global_batch - below else below
    share = nearest // world_size
    micro = _largest_divisor_at_most(share, micro_batch)
    return BatchLayout(nearest, micro, share // micro, world_size,
                       change=f"global batch {global_batch} -> {nearest} (the nearest multiple of the world size "
                              f"{world_size}; micro batch {micro_batch} -> {micro}); the sample plan continues by count")


def layouts_for_range(global_batch: int, micro_batch: int, min_world: int, max_world: int) -> list[BatchLayout]:
    """The layout of every world size an elastic job may get (for the launch report)."""
    return [batch_layout(global_batch, micro_batch, w, "nearest") for w in range(min_world, max_world + 1)]
