"""Trainer-side data client: turns the sample plan into per-rank micro batches.

Rank r of W takes positions r, r+W, r+2W, ... of every global batch, so the union over ranks of
one optimizer step is exactly the plan's next ``global_batch_size`` indices, whatever W is. The
only state is the number of global samples consumed (plus the plan fingerprint that guards it).

This in-process client decodes in a background thread (``num_workers=0`` semantics: the same
sequence as any parallel decoder, because order is fixed by the plan, not by who decodes).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from data_service.config import DataConfig
from data_service.errors import DataError
from data_service.plan import PLAN_VERSION, PlanDataset, SamplePlan
from data_service.schema import LIST_KEYS, TENSOR_KEYS

log = logging.getLogger(__name__)


class PlanMismatchError(RuntimeError):
    """A checkpoint's data state belongs to a different plan (mixture, datasets or seed changed)."""


@dataclass
class DataStats:
    """Counters the trainer logs (reset by ``pop``)."""

    samples: int = 0
    skipped: int = 0
    decode_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def pop(self) -> dict[str, float]:
        out = {"data/samples": float(self.samples), "data/skipped": float(self.skipped), "data/decode_s": self.decode_s}
        self.samples, self.skipped, self.decode_s = 0, 0, 0.0
        return out


class SampleReader:
    """Plan index -> one decoded sample dict, with a small LRU cache of standardized episodes."""

    # How far away (in plan indices) a replacement for a bad sample is drawn; far enough to
    # avoid the same episode group, and a pure function of the index so every rank agrees.
    _REPLACEMENT_STRIDE = 1_000_003

    def __init__(self, plan: SamplePlan, sources: list[Any], normalizers: list[Any], cfg: DataConfig,
                 make_sample: Callable[..., dict[str, Any]], stats: DataStats) -> None:
        self.plan, self.sources, self.normalizers, self.cfg = plan, sources, normalizers, cfg
        self._make_sample, self.stats = make_sample, stats
        self._episodes: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self._capacity = max(4, 2 * cfg.episode_group * len(sources))

    def _episode(self, d: int, e: int) -> Any:
        key = (d, e)
        ep = self._episodes.get(key)
        if ep is None:
            ep = self.sources[d].read_episode(e)
            self._episodes[key] = ep
            if len(self._episodes) > self._capacity:
                self._episodes.popitem(last=False)
        else:
            self._episodes.move_to_end(key)
        return ep

    def read(self, index: int) -> dict[str, Any]:
        attempts = 0
        probe = index
        while True:
            s = self.plan.sample(probe)
            try:
                ep = self._episode(s.dataset, s.episode)
                sample = self._make_sample(ep, s.t, self.sources[s.dataset], self.normalizers[s.dataset], self.cfg)
            except DataError:
                if self.cfg.on_bad_sample != "skip" or attempts >= 16:
                    raise
                attempts += 1
                self.stats.skipped += 1
                log.warning("skipping bad sample at plan index %d", probe, exc_info=True)
                probe = index + attempts * self._REPLACEMENT_STRIDE
                continue
            sample["sample_id"] = np.int64(index)
            sample["dataset_id"] = np.int64(s.dataset)
            return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-sample numpy fields into batch tensors; list fields stay lists."""
    batch: dict[str, Any] = {}
    for key in TENSOR_KEYS:
        batch[key] = torch.from_numpy(np.stack([np.asarray(s[key]) for s in samples]))
    for key in LIST_KEYS:
        batch[key] = [s[key] for s in samples]
    return batch


class DataClient:
    """Per-rank stream of micro batches with a tiny, world-size-independent state."""

    def __init__(self, plan: SamplePlan, reader: SampleReader, *, rank: int, world_size: int,
                 micro_batch_size: int, grad_accum: int, prefetch_batches: int = 2) -> None:
        self.plan, self.reader = plan, reader
        self.rank, self.world_size = rank, world_size
        self.micro_batch_size, self.grad_accum = micro_batch_size, grad_accum
        self.global_batch_size = micro_batch_size * grad_accum * world_size
        self.prefetch_batches = max(1, prefetch_batches)
        self.consumed = 0  # global samples of completed optimizer steps
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

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

    def _producer(self, consumed: int, out: queue.Queue, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                for micro in range(self.grad_accum):
                    t0 = time.perf_counter()
                    samples = [self.reader.read(i) for i in self.rank_indices(consumed, micro)]
                    batch = collate(samples)
                    self.reader.stats.decode_s += time.perf_counter() - t0
                    self.reader.stats.samples += len(samples)
                    while not stop.is_set():
                        try:
                            out.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                consumed += self.global_batch_size
        except BaseException as e:  # surfaced in the trainer thread by next_micro_batch
            out.put(e)

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
        item = self._queue.get()  # type: ignore[union-attr]
        if isinstance(item, BaseException):
            raise item
        return item

    def step_done(self) -> None:
        """Mark the current optimizer step's global batch as consumed (call after ``engine.step``)."""
        self.consumed += self.global_batch_size

    def iter_steps(self) -> Iterator[list[dict[str, Any]]]:
        while True:
            yield [self.next_micro_batch() for _ in range(self.grad_accum)]

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None


def build_plan_datasets(sources: list[Any], weights: list[float], windows: list[np.ndarray]) -> list[PlanDataset]:
    return [PlanDataset(name=s.name, windows_per_episode=w, weight=wt, fingerprint=s.fingerprint)
            for s, wt, w in zip(sources, weights, windows)]
