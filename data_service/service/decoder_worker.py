"""The body of one Ray decoder actor: plan indices in, one stacked numpy chunk out.

Torch-free (see ``data_service.sampling.reader``). The actor gets everything it decodes with in one
:class:`DecodeRecipe`: the plan, the opened sources (shipped as objects, so datasets registered
at run time and any source kind work), the normalizers and the data config. Workers therefore
never recompute statistics or consult a registry, and every worker decodes exactly like the
trainer's in-process path.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from lavla.data_service.cache import stable_hash
from lavla.data_service.config import DataConfig
from lavla.data_service.sampling.plan import SamplePlan
from lavla.data_service.sampling.reader import MakeSample, SampleReader, stack_samples

# DataConfig fields that change who decodes or how results travel, never what a sample holds;
# everything else (including fields added later) is part of the service identity.
_TRANSPORT_FIELDS = frozenset({
    "synthetic", "num_workers", "prefetch_batches", "log_sample_ids", "allow_new_plan", "ray_address",
    "ray_namespace", "service_name", "actor_lifetime", "worker_cpus", "max_request_retries",
})


@dataclass
class DecodeRecipe:
    """Everything a decoder needs; pickled once per rank into the Ray object store."""

    plan: SamplePlan
    """The sample plan (bad-sample replacements are drawn from it)."""
    sources: list[Any]
    """Opened :class:`~data_service.sources.EpisodeSource` objects, in mixture order."""
    normalizers: list[Any]
    """One :class:`~data_service.stats.Normalizer` per source."""
    cfg: DataConfig
    """The data config (window shape, image size, ``on_bad_sample``...)."""
    make_sample: MakeSample
    """Default sample assembly (``data_service.sampling.windowing.make_sample``)."""
    latents: Any = None
    """The opened ``data_service.latents.labels.LatentLabels`` when ``cfg.latent_labels`` is set
    (each decoder gets its own copy with an empty episode cache), else None."""

    def identity(self) -> str:
        """Hash of everything that decides the decoded bytes: attached services must match it."""
        fields = [f.name for f in dataclasses.fields(self.cfg) if f.name not in _TRANSPORT_FIELDS]
        cfg = {name: getattr(self.cfg, name) for name in fields}
        norms = [(type(n).__name__, getattr(n, "mode", None), getattr(getattr(n, "stats", None), "to_dict", dict)())
                 for n in self.normalizers]
        return stable_hash({"plan": self.plan.fingerprint, "cfg": cfg, "normalizers": norms,
                            "make_sample": f"{self.make_sample.__module__}.{self.make_sample.__qualname__}"})[:16]


class DecoderWorker:
    """One decoder: a :class:`SampleReader` with its episode cache, behind ``decode(indices)``."""

    def __init__(self, recipe: DecodeRecipe) -> None:
        self._identity = recipe.identity()
        self.reader = SampleReader(recipe.plan, recipe.sources, recipe.normalizers, recipe.cfg, recipe.make_sample,
                                   latents=recipe.latents)

    def describe(self) -> dict[str, Any]:
        """Identity (checked by every attaching client) and where this worker runs."""
        return {"identity": self._identity, "pid": os.getpid(), "host": socket.gethostname()}

    def decode(self, indices: list[int]) -> dict[str, Any]:
        """The samples at ``indices``, stacked in that order, plus the work's cost."""
        t0 = time.perf_counter()
        skipped0 = self.reader.skipped
        batch = stack_samples([self.reader.read(i) for i in indices])
        return {"batch": batch, "decode_s": time.perf_counter() - t0, "skipped": self.reader.skipped - skipped0}
