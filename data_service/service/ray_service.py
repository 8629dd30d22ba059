"""The Ray data service: named decoder actors shared by all ranks, and the per-rank client.

Order never depends on Ray. Each rank asks for exactly its plan indices (rank r of W takes
positions r, r+W, ... of every global batch), splits every micro batch into one request per
decoder, and re-assembles the tagged results in plan order. So the delivered sequence is the
in-process one, whatever the number of workers, their speed, or their crashes.

* Locality: a plan index goes to the decoder chosen by a hash of its (dataset, episode), so each
  episode is read and parsed by one decoder only, and its LRU episode cache stays effective
  (all ranks read the same episode group at the same time and share that decoder's cache).
* Backpressure: each rank keeps ``prefetch_batches`` micro batches in flight beyond the one it
  is waiting for; results live in the object store only until re-assembled, so memory is
  bounded by ranks x (prefetch + 1) micro batches plus the decoders' episode caches.
* Sharing: decoders are named actors ``<service>/decoder-<i>`` in ``data.ray_namespace``; ranks on
  any node attach with ``ray.init(address=...)``. Rank 0 creates them (its job owns job-scoped
  decoders); attaching ranks check the service decodes exactly what their own recipe would.
* Faults: a request whose decoder died (crash, OOM, node loss, ``ray.kill``) is re-issued to the
  restarted or re-created decoder under the same name; ``max_request_retries`` bounds it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from lavla.data_service.config import DataConfig
from lavla.data_service.service.decoder_worker import DecodeRecipe, DecoderWorker
from lavla.data_service.errors import DataError
from lavla.data_service.sampling.loader import ClientBase, to_torch
from lavla.data_service.sampling.plan import SamplePlan
from lavla.data_service.service.ray_cluster import RaySession, connect, import_ray, job_key, worker_runtime_env
from lavla.data_service.sampling.reader import MakeSample
from lavla.data_service.schema import LIST_KEYS, tensor_keys

log = logging.getLogger(__name__)


class DataServiceError(RuntimeError):
    """The decoder service failed: a decoder kept dying, failed to start, or does not match the plan."""


def default_service_name(recipe: DecodeRecipe) -> str:
    """Same in every rank of one job (any node), different across jobs and decode settings."""
    return f"lavla-{job_key()}-{recipe.identity()[:8]}"


class DecoderPool:
    """The named decoder actors of one service, seen from one rank."""

    def __init__(self, recipe: DecodeRecipe, *, name: str, namespace: str, num_workers: int, worker_cpus: float = 1.0,
                 lifetime: str = "job", max_restarts: int = 5) -> None:
        if num_workers < 1:
            raise ValueError(f"a decoder pool needs at least one worker, got {num_workers}")
        ray = import_ray()
        self._ray = ray
        self.name, self.namespace, self.num_workers = name, namespace, num_workers
        self.identity = recipe.identity()
        # By value, not an ObjectRef: a restarted actor must not depend on the creator's ref.
        self._recipe = recipe
        self._actor_cls = ray.remote(DecoderWorker)
        self._options = {
            "namespace": namespace,
            "get_if_exists": True,  # race-free attach: whoever comes first creates
            "lifetime": "detached" if lifetime == "detached" else None,
            "num_cpus": worker_cpus,
            "max_restarts": max_restarts,  # process crashes: Ray restarts the actor in place
            "max_task_retries": 0,  # in-flight requests are re-issued by the client, uniformly
            "runtime_env": worker_runtime_env(),
        }
        self.handles: list[Any] = [None] * num_workers
        self.generation = [0] * num_workers
        self._lock = threading.Lock()

    def actor_name(self, slot: int) -> str:
        return f"{self.name}/decoder-{slot}"

    def _get_or_create(self, slot: int) -> Any:
        return self._actor_cls.options(name=self.actor_name(slot), **self._options).remote(self._recipe)

    def attach(self) -> None:
        """Create the decoders, or attach to the existing ones of this name."""
        for slot in range(self.num_workers):
            self.handles[slot] = self._get_or_create(slot)

    def verify(self) -> list[dict[str, Any]]:
        """Wait until every decoder is up and check it decodes with this rank's recipe."""
        ray = self._ray
        try:
            described = ray.get([h.describe.remote() for h in self.handles])
        except ray.exceptions.RayActorError as e:
            raise DataServiceError(f"a decoder of service {self.name!r} failed to start: {e}") from e
        for slot, d in enumerate(described):
            if d["identity"] != self.identity:
                raise DataServiceError(
                    f"decoder {self.actor_name(slot)!r} in Ray namespace {self.namespace!r} belongs to a different "
                    f"plan or decode setting (its identity {d['identity']}, ours {self.identity}). Another run uses "
                    "this data.service_name: choose another, or remove it with "
                    f"`python -m lavla.data_service.service.ray_service --shutdown {self.name}`.")
        return described

    def slot_for(self, dataset: int, episode: int) -> int:
        """Decoder of an episode: a fixed multiplicative hash, so every rank routes alike."""
        h = ((episode + 1) * 0x9E3779B1 + dataset * 0x85EBCA77) & 0xFFFFFFFF
        return (h * self.num_workers) >> 32

    def submit(self, slot: int, indices: list[int]) -> tuple[Any, int]:
        with self._lock:
            handle, generation = self.handles[slot], self.generation[slot]
        return handle.decode.remote(indices), generation

    def revive(self, slot: int, generation: int) -> None:
        """Replace the handle of a decoder seen dead at ``generation`` (once, whoever notices first).

        Ray restarts crashed actors in place (same handle); a killed one is re-created under the
        same name, by this rank or another one (``get_if_exists``)."""
        with self._lock:
            if self.generation[slot] != generation:
                return  # already replaced after an earlier failure
            self.handles[slot] = self._get_or_create(slot)
            self.generation[slot] += 1

    def shutdown(self) -> None:
        """Kill this service's decoders (other ranks attached to them will fail)."""
        for handle in self.handles:
            if handle is not None:
                self._ray.kill(handle)
        self.handles = [None] * self.num_workers


@dataclass
class _Part:
    """One request: the indices of one micro batch routed to one decoder."""

    slot: int
    positions: np.ndarray
    indices: list[int]
    ref: Any
    generation: int
    attempts: int = 0


@dataclass
class _Pending:
    """One micro batch in flight."""

    indices: list[int]
    parts: list[_Part]


class RayDataClient(ClientBase):
    """One rank's stream of micro batches decoded by a :class:`DecoderPool`."""

    def __init__(self, plan: SamplePlan, pool: DecoderPool, *, rank: int, world_size: int, micro_batch_size: int,
                 grad_accum: int, prefetch_batches: int = 2, max_request_retries: int = 5,
                 session: RaySession | None = None, show_progress: bool | None = None) -> None:
        super().__init__(plan, rank=rank, world_size=world_size, micro_batch_size=micro_batch_size,
                         grad_accum=grad_accum, prefetch_batches=prefetch_batches)
        self.pool, self.session = pool, session
        self.max_request_retries = max_request_retries
        self._ray = import_ray()
        self._window: deque[_Pending] = deque()
        self._cursor = (0, 0)  # (step start, micro) of the next micro batch to request
        self._warmed = False
        self._show_progress = rank == 0 if show_progress is None else show_progress
        self._restart()

    # --- requests ----------------------------------------------------------------------------
    def _restart(self) -> None:
        self._window.clear()  # dropping the refs frees results still in flight
        self._cursor = (self.consumed, 0)

    def _request_next(self) -> None:
        consumed, micro = self._cursor
        indices = self.rank_indices(consumed, micro)
        by_slot: dict[int, list[int]] = {}
        for pos, index in enumerate(indices):
            s = self.plan.sample(index)
            by_slot.setdefault(self.pool.slot_for(s.dataset, s.episode), []).append(pos)
        parts = []
        for slot, positions in sorted(by_slot.items()):
            chunk = [indices[p] for p in positions]
            ref, generation = self.pool.submit(slot, chunk)
            parts.append(_Part(slot, np.asarray(positions), chunk, ref, generation))
        self._window.append(_Pending(indices, parts))
        micro += 1
        self._cursor = (consumed + self.global_batch_size, 0) if micro == self.grad_accum else (consumed, micro)

    def _fill(self) -> None:
        while len(self._window) <= self.prefetch_batches:
            self._request_next()

    def _ready_batches(self) -> int:
        refs = [p.ref for b in self._window for p in b.parts]
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        done = set(ready)
        return sum(all(p.ref in done for p in b.parts) for b in self._window)

    def _warm_up(self) -> None:
        """Progress bar (rank 0) while the decoders start and the first batches fill."""
        from tqdm import tqdm

        pending = [p.ref for b in self._window for p in b.parts]
        desc = f"data service {self.pool.name}: {self.pool.num_workers} decoders filling the first batches"
        with tqdm(total=len(pending), desc=desc, unit="req", leave=False, disable=not self._show_progress) as bar:
            while pending:
                ready, pending = self._ray.wait(pending, num_returns=1, fetch_local=False)
                bar.update(len(ready))

    # --- results -----------------------------------------------------------------------------
    def _result(self, part: _Part) -> dict[str, Any]:
        ray = self._ray
        while True:
            try:
                return ray.get(part.ref)
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, DataError):
                    raise cause from None  # names file, episode and field
                raise
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
                part.attempts += 1
                if part.attempts > self.max_request_retries:
                    raise DataServiceError(
                        f"decoder {self.pool.actor_name(part.slot)!r} died {part.attempts} times while decoding "
                        f"plan indices {part.indices}; giving up (data.max_request_retries="
                        f"{self.max_request_retries}). Last error: {e}") from e
                log.warning("decoder %s died (%s); re-issuing %d plan indices", self.pool.actor_name(part.slot),
                            type(e).__name__, len(part.indices))
                self.stats.add(reissued=1)
                time.sleep(min(1.0, 0.1 * part.attempts))  # let Ray record the death before the name lookup
                self.pool.revive(part.slot, part.generation)
                part.ref, part.generation = self.pool.submit(part.slot, part.indices)

    def _assemble(self, pending: _Pending) -> dict[str, Any]:
        n = len(pending.indices)
        results = [self._result(part) for part in pending.parts]
        chunks = [r["batch"] for r in results]
        out: dict[str, Any] = {}
        for key in tensor_keys(chunks[0]):
            # The dtype np.stack would give the whole micro batch (sources may differ).
            out[key] = np.empty((n, *chunks[0][key].shape[1:]), np.result_type(*(c[key] for c in chunks)))
            for part, chunk in zip(pending.parts, chunks):
                out[key][part.positions] = chunk[key]
        lists: dict[str, list[Any]] = {k: [None] * n for k in LIST_KEYS}
        for part, chunk in zip(pending.parts, chunks):
            for key in LIST_KEYS:
                for pos, value in zip(part.positions.tolist(), chunk[key]):
                    lists[key][pos] = value
        decode_s = sum(r["decode_s"] for r in results)
        skipped = sum(r["skipped"] for r in results)
        if out["sample_id"].tolist() != pending.indices:  # re-ordering is the service's one promise
            raise DataServiceError(f"re-assembled sample ids {out['sample_id'].tolist()} != plan {pending.indices}")
        self.stats.add(decode_s=decode_s, skipped=skipped)
        return {**out, **lists}

    def next_micro_batch(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self._fill()
        if not self._warmed:
            self._warm_up()
            self._warmed = True
        self.stats.observe_depth(self._ready_batches())
        pending = self._window.popleft()
        batch = self._assemble(pending)
        self._fill()
        self.stats.add(samples=len(pending.indices), wait_s=time.perf_counter() - t0)
        return to_torch(batch)

    def close(self) -> None:
        self._window.clear()
        if self.session is not None:
            self.session.close()
            self.session = None


def build_ray_client(plan: SamplePlan, sources: list[Any], normalizers: list[Any], cfg: DataConfig,
                     make_sample: MakeSample, *, rank: int, world_size: int, micro_batch_size: int, grad_accum: int,
                     is_local_leader: bool, barrier: Callable[[], None], latents: Any = None) -> RayDataClient:
    """Attach this rank to Ray and to the decoder service (collective: every rank calls it).

    ``latents``: the opened ``LatentLabels`` of ``cfg.latent_labels`` (shipped to the decoders)."""
    session = connect(cfg, is_local_leader=is_local_leader, barrier=barrier)
    try:
        recipe = DecodeRecipe(plan=plan, sources=sources, normalizers=normalizers, cfg=cfg, make_sample=make_sample,
                              latents=latents)
        name = cfg.service_name or default_service_name(recipe)
        pool = DecoderPool(recipe, name=name, namespace=cfg.ray_namespace, num_workers=cfg.num_workers,
                           worker_cpus=cfg.worker_cpus, lifetime=cfg.actor_lifetime,
                           max_restarts=cfg.max_request_retries)
        if rank == 0:  # rank 0 creates, so its job owns job-scoped decoders
            pool.attach()
        barrier()
        if rank != 0:
            pool.attach()
        described = pool.verify()
        if rank == 0:
            hosts = sorted({d["host"] for d in described})
            log.info("data service %r: %d decoders on %s (namespace %r)", name, len(described), ", ".join(hosts),
                     cfg.ray_namespace)
    except BaseException:
        session.close(peer_timeout_s=0)
        raise
    return RayDataClient(plan, pool, rank=rank, world_size=world_size, micro_batch_size=micro_batch_size,
                         grad_accum=grad_accum, prefetch_batches=cfg.prefetch_batches,
                         max_request_retries=cfg.max_request_retries, session=session)


def decoder_names(ray: Any, namespace: str) -> list[str]:
    """Names of every decoder actor in ``namespace``."""
    return sorted(x["name"] for x in ray.util.list_named_actors(all_namespaces=True)
                  if x["namespace"] == namespace and "/decoder-" in x["name"])


def shutdown_service(ray: Any, name: str, namespace: str) -> int:
    """Kill the decoders of service ``name`` (detached ones outlive their jobs); returns how many."""
    mine = [n for n in decoder_names(ray, namespace) if n.rsplit("/decoder-", 1)[0] == name]
    for n in mine:
        ray.kill(ray.get_actor(n, namespace=namespace))
    return len(mine)


def main(argv: list[str] | None = None) -> int:
    """``python -m lavla.data_service.service.ray_service --address ADDR [--list | --shutdown NAME]``."""
    p = argparse.ArgumentParser(prog="python -m lavla.data_service.service.ray_service",
                                description="Inspect or remove decoder services.")
    p.add_argument("--address", default="auto", help="Ray cluster address (default: auto)")
    p.add_argument("--namespace", default=DataConfig.ray_namespace)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="list decoder actors")
    g.add_argument("--shutdown", metavar="NAME", help="kill the decoders of service NAME")
    a = p.parse_args(argv)
    ray = import_ray()
    ray.init(address=a.address, namespace=a.namespace, log_to_driver=False, configure_logging=False)
    try:
        if a.list:
            print("\n".join(decoder_names(ray, a.namespace)) or "(no decoder actors)")
            return 0
        killed = shutdown_service(ray, a.shutdown, a.namespace)
        print(f"killed {killed} decoder(s) of {a.shutdown!r}")
        return 0 if killed else 1
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
