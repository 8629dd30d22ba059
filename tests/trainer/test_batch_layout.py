"""Batch layouts for any world size: exact when it fits, the nearest valid one for elastic jobs."""

from __future__ import annotations

import pytest

from lavla.trainer.batch_layout import BatchLayoutError, batch_layout, layouts_for_range


def test_configured_layout_when_it_divides() -> None:
    lay = batch_layout(32, 4, 2)
    assert (lay.global_batch_size, lay.micro_batch_size, lay.grad_accum, lay.change) == (32, 4, 4, "")


def test_exact_policy_refuses_and_names_the_fix() -> None:
    with pytest.raises(BatchLayoutError, match="trainer.batch_layout=nearest"):
        batch_layout(32, 4, 3)


@pytest.mark.parametrize("world", range(1, 17))
def test_nearest_layout_is_always_valid(world: int) -> None:
    lay = batch_layout(48, 8, world, "nearest")
    assert lay.micro_batch_size * lay.grad_accum * lay.world_size == lay.global_batch_size
    assert 1 <= lay.micro_batch_size <= 8
    # The configured batch is kept whenever the world size divides it.
    assert (lay.global_batch_size == 48) == (48 % world == 0)
    assert abs(lay.global_batch_size - 48) < world


def test_nearest_keeps_the_global_batch_with_a_smaller_micro_batch() -> None:
    lay = batch_layout(24, 8, 6, "nearest")  # 4 samples per rank: micro 8 cannot be kept
    assert (lay.global_batch_size, lay.micro_batch_size, lay.grad_accum) == (24, 4, 1)
    assert "micro batch 8 -> 4" in lay.change


def test_nearest_global_batch_when_the_world_does_not_divide_it() -> None:
    lay = batch_layout(32, 4, 3, "nearest")  # 30 and 33: 33 is nearer
    assert (lay.global_batch_size, lay.micro_batch_size, lay.grad_accum) == (33, 1, 11)
    assert batch_layout(31, 4, 2, "nearest").global_batch_size == 30  # tie 30/32: the smaller
    assert batch_layout(2, 4, 3, "nearest").global_batch_size == 3  # never 0


def test_layouts_for_a_range_cover_every_size() -> None:
    lays = layouts_for_range(64, 8, 4, 8)
    assert [lay.world_size for lay in lays] == [4, 5, 6, 7, 8]
    assert [lay.change == "" for lay in lays] == [True, False, False, False, True]
