"""Offline latent-action labels in training samples (``data.latent_labels``).

:class:`LatentLabels` joins a latent-label store (``data_service.latents.store``, written by
``launcher/annotate_latents.py``) to the sample plan: for the sample at step ``t`` of episode
``e`` of a mixture dataset it adds, for the action-chunk steps ``t .. t+N-1``
(N = ``data.action_horizon``, the indices ``windowing.action_chunk`` uses)::

    latent_ids    int64   [N, Q]     token ids at min(t+i, T-1)
    latent_emb    float32 [N, Q, D]  embeddings at min(t+i, T-1)
    latent_valid  bool    [N]        t+i < T
    has_latent    bool    []         the store labels this dataset

The key is (dataset registry name, episode index within the split, step), the identity every
sample has, so robot episodes and human-video clips (episode = clip index) are handled alike.

* A mixture dataset the store holds no episode of is *unannotated*: its samples carry zeros,
  all-False ``latent_valid`` and ``has_latent`` False (one warning per dataset at start-up).
* An annotated dataset must be annotated completely: a missing or incomplete episode is a
  DataError naming the store, dataset and episode, raised at start-up (``on_bad_sample: error``;
  with ``skip`` it is a warning, and the samples of such episodes are skipped like bad samples).
  An episode whose label count differs from its length is a DataError when it is first read.
* The store must label the split the mixture reads (episode indices are split-relative): a store
  written for ``train`` serves ``train[:95%]`` (a prefix), not ``train[95%:]``.

Reads go through the store's per-process LRU of whole loaded episodes (``LatentStore``, sized by
``data.latent_cache_mb``), so each decoder (a trainer thread or a Ray actor, which gets its own
unpickled copy) keeps the episodes of the current plan group in memory and indexes them without
further I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lavla.data_service.config import DataConfig
from lavla.data_service.errors import DataError
from lavla.data_service.latents.store import LatentStore

log = logging.getLogger(__name__)

_MAX_LISTED = 5


def _merged(ranges: list[Any]) -> list[tuple[str, int, int]]:
    """Split ranges as (split, start, stop), empty ones dropped and contiguous ones merged."""
    out: list[tuple[str, int, int]] = []
    for r in ranges:
        if len(r) == 0:
            continue
        if out and out[-1][0] == r.split and out[-1][2] == r.start:
            out[-1] = (r.split, out[-1][1], r.stop)
        else:
            out.append((r.split, r.start, r.stop))
    return out


def _is_prefix(ours: list[Any], theirs: list[Any]) -> bool:
    """Whether episode i of ``ours`` is episode i of ``theirs`` for every i (split ranges)."""
    a, b = _merged(ours), _merged(theirs)
    if len(a) > len(b):
        return False
    for i, (x, y) in enumerate(zip(a, b)):
        last = i == len(a) - 1
        if x[0] != y[0] or x[1] != y[1] or (x[2] != y[2] and not (last and x[2] < y[2])):
            return False
    return True


def _check_split(store: LatentStore, source: Any) -> None:
    """The store's episode indices must mean the mixture's: same split, or a prefix of it."""
    written = store.metadata.get("splits", {}).get(source.name)
    ours = getattr(source, "split", None) or getattr(getattr(source, "entry", None), "split", None)
    if written is None or ours is None or written == ours:
        return
    dataset = getattr(source, "dataset", None)
    if hasattr(dataset, "resolve"):  # RLDS: compare the resolved episode ranges
        try:
            compatible = _is_prefix(dataset.resolve(ours), dataset.resolve(written))
        except DataError:
            compatible = False
        if not compatible:
            raise DataError(f"labels of dataset {source.name!r} were written for split {written!r}, the mixture "
                            f"reads {ours!r}: episode indices would not match (annotate this split into its own "
                            f"store)", file=store.path, field=f"latents/{source.name}")
        return
    log.warning("latent store %s labels %s split %r, the mixture reads %r: cannot check that episode indices "
                "agree (each episode's length still is)", store.path, source.name, written, ours)


@dataclass
class LatentLabels:
    """Adds the latent keys of ``data_service.schema`` to samples (see the module doc); picklable."""

    store: LatentStore
    """The opened store (its episode LRU starts empty in every process it is unpickled in)."""
    horizon: int
    """N: steps per action chunk."""
    annotated: frozenset[str] = field(default_factory=frozenset)
    """Names of the mixture datasets the store labels; the others get ``has_latent`` False."""

    @classmethod
    def open(cls, cfg: DataConfig, sources: list[Any]) -> LatentLabels:
        """Opens ``cfg.latent_labels`` for the mixture ``sources`` and checks it covers them: one
        warning per unannotated dataset; DataError for missing episodes or another split. The
        episode LRU holds ``cfg.latent_cache_mb`` MiB."""
        store = LatentStore(cfg.latent_labels, cache_bytes=cfg.latent_cache_mb << 20)
        annotated: set[str] = set()
        listed: dict[str, set[int]] = {}
        for source in sources:  # every entry: a name may appear twice in a mixture (e.g. two splits)
            if source.name not in listed:
                listed[source.name] = set(store.episodes(source.name))
                if not listed[source.name]:
                    log.warning("latent store %s has no labels for dataset %r: its samples get has_latent=False",
                                store.path, source.name)
            done = listed[source.name]
            if not done:
                continue
            _check_split(store, source)
            lengths = np.asarray(source.episode_lengths)
            missing = [e for e in np.flatnonzero(lengths > 0).tolist() if e not in done]
            if missing:
                shown = ", ".join(map(str, missing[:_MAX_LISTED])) + (", ..." if len(missing) > _MAX_LISTED else "")
                err = DataError(f"dataset {source.name!r} is annotated but {len(missing)} of its {len(lengths)} "
                                f"episodes have no complete latent labels (episodes {shown}): finish the "
                                f"annotation job (it resumes) or annotate this split",
                                file=store.path, episode=missing[0], field=f"latents/{source.name}")
                if cfg.on_bad_sample == "error":
                    raise err
                log.warning("%s; their samples will be skipped", err)
            annotated.add(source.name)
        log.info("latent labels %s: Q=%d, D=%d for %s", store.path, store.num_tokens, store.dim,
                 ", ".join(sorted(annotated)) or "no dataset of the mixture")
        return cls(store=store, horizon=cfg.action_horizon, annotated=frozenset(annotated))

    def labels(self, dataset: str, episode: int, t: int, length: int) -> dict[str, np.ndarray]:
        """The latent keys of the sample at step ``t`` of an episode of ``length`` steps."""
        N, Q, D = self.horizon, self.store.num_tokens, self.store.dim
        if dataset not in self.annotated:
            return {"latent_ids": np.zeros((N, Q), np.int64), "latent_emb": np.zeros((N, Q, D), np.float32),
                    "latent_valid": np.zeros(N, bool), "has_latent": np.asarray(False)}
        T = int(length)
        labelled = self.store.num_steps(dataset, episode)  # DataError (store, dataset, episode) if missing
        if labelled != T:
            raise DataError(f"latent labels cover {labelled} steps of dataset {dataset!r} episode {episode}, the "
                            f"episode has {T} (labels of another split or version of the dataset?)",
                            file=self.store.path, episode=int(episode), field=f"latents/{dataset}")
        idx = np.arange(t, t + N)
        ids, emb = self.store.get(dataset, episode, np.minimum(idx, T - 1))
        return {"latent_ids": ids, "latent_emb": emb, "latent_valid": idx < T, "has_latent": np.asarray(True)}
