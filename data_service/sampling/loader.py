"""Trainer-side data clients: turn the sample plan into per-rank micro batches.

Rank r of W takes positions r, r+W, r+2W, ... of every global batch, so the union over ranks of
one optimizer step is exactly the plan's next ``global_batch_size`` indices, whatever W is. The
only state is the number of global samples consumed (plus the plan fingerprint that guards it).

:class:`ClientBase` holds that state and the rank slicing; subclasses only decide who decodes.
:class:`DataClient` decodes in a background thread of the trainer process (``num_workers=0``);
``data_service.service.ray_service.RayDataClient`` decodes in Ray actors. Both deliver the identical
sequence, because order is fixed by the plan, not by who decodes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Iterator

import numpy as np
import torch

from lavla.data_service.data_stats import DataStats
from lavla.data_service.sampling.plan import PLAN_VERSION, PlanDataset, SamplePlan
from lavla.data_service.sampling.reader import SampleReader, stack_samples
from lavla.data_service.schema import OPTIONAL_TENSOR_KEYS, TENSOR_KEYS

log = logging.getLogger(__name__)

__all__ = ["ClientBase", "DataClient", "DataStats", "PlanMismatchError", "SampleReader", "build_plan_datasets",
           "collate", "to_torch"]


_TENSOR_KEYS = frozenset(TENSOR_KEYS + OPTIONAL_TENSOR_KEYS)


class PlanMismatchError(RuntimeError):
    """A checkpoint's data state belongs to a different plan (mixture, datasets or seed changed)."""


def to_torch(batch: dict[str, Any]) -> dict[str, Any]:
    """Stacked numpy batch -> torch tensors for tensor keys (zero-copy); list keys stay lists."""
    return {k: (torch.from_numpy(v) if k in _TENSOR_KEYS else v) for k, v in batch.items()}


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-sample numpy fields into batch tensors; list fields stay lists."""
    return to_torch(stack_samples(samples))


class ClientBase:
    """Per-rank stream of micro batches with a tiny, world-size-independent state."""

    def __init__(self, plan: SamplePlan, *, rank: int, world_size: int, micro_batch_size: int, grad_accum: int,
                 prefetch_batches: int = 2, stats: DataStats | None = None) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.plan = plan
        self.rank, self.world_size = rank, world_size
        self.micro_batch_size, self.grad_accum = micro_batch_size, grad_accum
        self.global_batch_size = micro_batch_size * grad_accum * world_size
        self.prefetch_batches = max(1, prefetch_batches)
        self.stats = stats if stats is not None else DataStats()
        self.consumed = 0  # global samples of completed optimizer steps

    # --- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "plan_version": PLAN_VERSION,
            "seed": self.plan.seed,
            "consumed": self.consumed,
            "epoch": self.plan.epoch_of(self.consumed),
            "fingerprint": self.plan.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any], allow_new_plan: bool = False) -> None:
        if state.get("fingerprint") != self.plan.fingerprint or state.get("plan_version") != PLAN_VERSION:
            if not allow_new_plan:
                raise PlanMismatchError(
                    "the checkpoint's data position belongs to a different sample plan "
                    f"(saved fingerprint {state.get('fingerprint')}, current {self.plan.fingerprint}): the mixture, "
                    "a dataset, the seed or the windowing changed. Resuming would repeat or skip samples. "
                    "Pass --data.allow_new_plan=true to start a fresh plan from sample 0."
                )
            log.warning("data plan changed; starting a fresh plan from sample 0 (--data.allow_new_plan)")
            self.consumed = 0
        else:
            self.consumed = int(state["consumed"])
        self._restart()

    # --- iteration ---------------------------------------------------------------------------
    def rank_indices(self, consumed: int, micro: int) -> list[int]:
        """Plan indices of this rank's ``micro``-th micro batch of the step starting at ``consumed``."""
        start = micro * self.micro_batch_size
        return [consumed + self.rank + self.world_size * j for j in range(start, start + self.micro_batch_size)]

    def step_done(self) -> None:
        """Mark the current optimizer step's global batch as consumed (call after ``engine.step``)."""
        self.consumed += self.global_batch_size

    def iter_steps(self) -> Iterator[list[dict[str, Any]]]:
        while True:
            yield [self.next_micro_batch() for _ in range(self.grad_accum)]

    def next_micro_batch(self) -> dict[str, Any]:
        raise NotImplementedError

    def _restart(self) -> None:
        """Drop anything prefetched and continue from ``self.consumed``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class DataClient(ClientBase):
    """Decodes in one background thread of the trainer process (``data.num_workers=0``)."""

    def __init__(self, plan: SamplePlan, reader: SampleReader | None, *, rank: int, world_size: int,
                 micro_batch_size: int, grad_accum: int, prefetch_batches: int = 2) -> None:
        stats = reader.stats if reader is not None else None
        super().__init__(plan, rank=rank, world_size=world_size, micro_batch_size=micro_batch_size,
                         grad_accum=grad_accum, prefetch_batches=prefetch_batches, stats=stats)
        if reader is not None and reader.stats is None:
            reader.stats = self.stats
        self.reader = reader
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _producer(self, consumed: int, out: queue.Queue, stop: threading.Event) -> None:
        assert self.reader is not None
        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        try:
            while not stop.is_set():
                for micro in range(self.grad_accum):
                    t0 = time.perf_counter()
                    batch = collate([self.reader.read(i) for i in self.rank_indices(consumed, micro)])
                    self.stats.add(decode_s=time.perf_counter() - t0)
                    put(batch)
                consumed += self.global_batch_size
        except BaseException as e:  # surfaced in the trainer thread by next_micro_batch
            put(e)

    def _restart(self) -> None:
        self.close()
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch_batches)
        self._thread = threading.Thread(target=self._producer, args=(self.consumed, self._queue, self._stop),
                                        name="data-prefetch", daemon=True)
        self._thread.start()

    def next_micro_batch(self) -> dict[str, Any]:
        if self._thread is None:
            self._restart()
        assert self._queue is not None
        t0 = time.perf_counter()
        self.stats.observe_depth(self._queue.qsize())
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        self.stats.add(samples=len(item["sample_id"]), wait_s=time.perf_counter() - t0)
        return item

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None


def build_plan_datasets(sources: list[Any], weights: list[float], windows: list[np.ndarray]) -> list[PlanDataset]:
    return [PlanDataset(name=s.name, windows_per_episode=w, weight=wt, fingerprint=s.fingerprint)
            for s, wt, w in zip(sources, weights, windows)]
