"""Assemble the data side of a run: generate the synthetic world if asked, open the sources,
compute (or load cached) normalization statistics, build the sample plan and the rank's client
(``data.num_workers == 0``: decoded in a thread of this process; ``> 0``: by the Ray service).

Coordination is passed in as two callables so this module stays free of process-group code:
``is_local_leader`` does the one-per-node work (generation, statistics passes) while the other
ranks wait at ``barrier`` and then read the cached results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from lavla.data_service.config import DataConfig
from lavla.data_service.data_stats import DataStats
from lavla.data_service.sampling.loader import ClientBase, DataClient, SampleReader, build_plan_datasets
from lavla.data_service.sampling.plan import SamplePlan

log = logging.getLogger(__name__)


@dataclass
class DataBundle:
    """Everything the trainer needs from the data side."""

    client: ClientBase
    """This rank's stream of micro batches (in-process thread or Ray service)."""
    sources: list[Any]
    normalizers: list[Any]
    plan: SamplePlan
    stats: DataStats
    """The client's counters (``pop()`` each logging window)."""

    def normalization_stats(self) -> dict[str, Any]:
        """JSON-able statistics per dataset (saved with every checkpoint for de-normalization)."""
        return {s.name: s.statistics().to_dict() for s in self.sources}


def lam_stride(source: Any, cfg: DataConfig) -> int:
    return cfg.lam_stride if cfg.lam_stride > 0 else int(source.spec.lam_stride)


def build_data(cfg: DataConfig, *, rank: int, world_size: int, micro_batch_size: int, grad_accum: int,
               is_local_leader: bool, barrier: Callable[[], None]) -> DataBundle:
    from lavla.data_service.datasets.inline_spec import spec_for_entry
    from lavla.data_service.sources import open_source
    from lavla.data_service.stats import Normalizer
    from lavla.data_service.sampling.windowing import make_sample, valid_timesteps

    if cfg.synthetic.enabled:
        if is_local_leader:
            from lavla.data_service.synthetic import generate_synthetic_world

            generate_synthetic_world(cfg.synthetic)
        barrier()

    specs = [spec_for_entry(entry, i) for i, entry in enumerate(cfg.datasets)]  # bad inline specs fail here
    if any(spec.is_video for spec in specs):
        import lavla.data_service.video.source  # noqa: F401  registers the video opener (the [video] extra)
    sources = [open_source(entry, cfg, i) for i, entry in enumerate(cfg.datasets)]
    # Statistics passes run once per node; the others read the JSON cache afterwards.
    if is_local_leader:
        for s in sources:
            s.statistics()
    barrier()
    normalizers = [Normalizer(s.statistics(), cfg.normalization, s.spec.action_absolute_mask) for s in sources]

    windows = []
    for s in sources:
        H = lam_stride(s, cfg)
        windows.append(np.array([len(valid_timesteps(int(n), H, cfg)) for n in s.episode_lengths], dtype=np.int64))
    latents = None
    if cfg.latent_labels:  # opened (and checked against the mixture) once, before any decoder starts
        from lavla.data_service.latents.labels import LatentLabels

        latents = LatentLabels.open(cfg, sources)
    plan = SamplePlan(build_plan_datasets(sources, [e.weight for e in cfg.datasets], windows),
                      seed=cfg.seed, block_size=cfg.plan_block_size, episode_group=cfg.episode_group)
    mix = ", ".join(f"{s.name} {100 * p:.1f}%" for s, p in zip(sources, plan.probabilities))
    log.info("data plan %s: %s", plan.fingerprint, mix)
    client: ClientBase
    if cfg.num_workers > 0:
        from lavla.data_service.service.ray_service import build_ray_client  # Ray is an optional extra

        client = build_ray_client(plan, sources, normalizers, cfg, make_sample, rank=rank, world_size=world_size,
                                  micro_batch_size=micro_batch_size, grad_accum=grad_accum,
                                  is_local_leader=is_local_leader, barrier=barrier, latents=latents)
    else:
        reader = SampleReader(plan, sources, normalizers, cfg, make_sample, DataStats(), latents=latents)
        client = DataClient(plan, reader, rank=rank, world_size=world_size, micro_batch_size=micro_batch_size,
                            grad_accum=grad_accum, prefetch_batches=cfg.prefetch_batches)
    return DataBundle(client=client, sources=sources, normalizers=normalizers, plan=plan, stats=client.stats)
