"""Typed configuration of the data side: which datasets, how samples are windowed and batched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DatasetEntry:
    """One dataset of the training mixture."""

    name: str = "synthetic_world"
    """Registry name of the dataset (standardization, frame stride, gripper convention)."""
    path: str = ".cache/data/synthetic_world/synthetic_world/1.0.0"
    """RLDS: the TFDS build directory (dataset_info.json, features.json, *.tfrecord-*); video: the clips directory."""
    weight: float = 1.0
    """Mixture weight; the effective share is weight x transitions, normalized (OpenVLA/Octo)."""
    split: str = "train"
    """Split expression, e.g. ``train``, ``train[:95%]``, ``train[:95%]+val`` (TFDS semantics)."""
    annotations: str = ""
    """Video datasets: annotation file (SSv2 JSON or ``path,instruction`` CSV); empty finds it under ``path``."""
    frame_cache: str = ""
    """Video datasets: zarr frame cache from ``python -m lavla.data_service.video.prepare``; empty uses ``<path>/frames.zarr`` if present."""
    spec: dict[str, Any] = field(default_factory=dict)
    """Inline dataset spec (the fields of ``data_service.datasets.dataset_spec.DatasetSpec``, without ``name``) for a
    dataset the registry does not know; ``lavla-data inspect`` writes it. Empty = the registry's spec of ``name``."""


@dataclass
class SyntheticDataConfig:
    """The synthetic world used by the quickstart and the tests (generated when missing)."""

    enabled: bool = False
    """Generate the dataset at ``root`` before training when it does not exist yet."""
    root: str = ".cache/data/synthetic_world"
    """TFDS data_dir the synthetic dataset is written into."""
    train_episodes: int = 64
    """Episodes in the train split."""
    val_episodes: int = 8
    """Episodes in the val split."""
    episode_length: int = 40
    """Steps per episode."""
    image_size: int = 64
    """Rendered frame side in pixels."""
    seed: int = 0
    """Generator seed; the same seed writes byte-identical shards."""
    tasks: list[str] = field(default_factory=lambda: ["pick", "push", "move", "place", "rotate"])
    """Task families to draw (a curriculum starts with ``[move]`` or ``[move, rotate]``); their relative
    frequencies (``synthetic.TASK_FAMILIES``) are renormalized over this list."""
    tilt_wobble: bool = False
    """Make the expert's roll/pitch follow a random sinusoid no frame reveals (unlearnable label
    noise, the world's old behaviour); off, the wrist stays level and roll/pitch actions are 0."""
    idle_steps: int = 2
    """Steps recorded after the expert finishes (holding still) before the episode ends; -1 keeps
    every episode at its drawn length (``episode_length``, give or take a quarter) with a still tail."""


@dataclass
class DataConfig:
    """What the trainer consumes: the mixture, the window shape and the sampling seed."""

    datasets: list[DatasetEntry] = field(default_factory=lambda: [DatasetEntry()])
    """The mixture. Robot (RLDS) and human-video datasets mix in one plan."""
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    """Synthetic world generation (quickstart, tests)."""
    seed: int = 0
    """Seed of the sample plan: order is a pure function of (seed, mixture, epoch, index)."""
    image_size: int = 64
    """Side of the square images delivered to the model (frames are resized on decode). In a run config
    left unstated, it is the recipe's (``model.input_spec()``), as are the three shapes below."""
    action_horizon: int = 8
    """N: length of the action chunk a_t..a_{t+N-1}."""
    max_action_dim: int = 7
    """A: action vectors are zero-padded to this many dims (with ``action_dim_mask``)."""
    max_proprio_dim: int = 8
    """P: proprio vectors are zero-padded to this many dims (with ``proprio_dim_mask``)."""
    latent_labels: str = ""
    """Latent-label store (zarr, ``python -m lavla.launcher.annotate_latents``): every sample then carries
    ``latent_ids``/``latent_emb``/``latent_valid``/``has_latent`` for its action-chunk steps (see
    ``data_service.schema``). Empty: no latent keys in batches."""
    latent_cache_mb: int = 256
    """Per decoder: MiB of latent-label episodes kept loaded (LRU) when ``latent_labels`` is set."""
    lam_stride: int = 0
    """H override for the LAM pair (x_t, x_{t+H}); 0 uses each dataset's registry stride."""
    future_out_of_range: str = "clamp"
    """``clamp``: t+H past the episode end is clamped to T-1; ``drop``: such t are never sampled."""
    normalization: str = "bounds_q99"
    """Action/proprio normalization: ``bounds_q99`` | ``normal`` (mean/std) | ``bounds`` (min/max)."""
    on_bad_sample: str = "error"
    """``error``: stop with a message naming file, episode and field; ``skip``: count and skip."""
    episode_group: int = 32
    """Episodes whose windows are interleaved together in the plan; bounds the decoded-episode cache."""
    plan_block_size: int = 4096
    """Mixture block: every block of this many global samples holds each dataset's exact quota."""
    num_workers: int = 0
    """Ray decoder actors shared by all ranks; 0 decodes in a thread of each trainer process. Every
    value (and any change of it on resume) gives the identical sample sequence."""
    decoded_frame_cache_mb: int = 256
    """Per decoder: MiB of recently decoded frames kept for reuse by neighbouring windows (0 disables)."""
    prefetch_batches: int = 2
    """Micro batches decoded ahead of the trainer per rank (bounds in-flight requests and memory)."""
    ray_address: str = ""
    """Ray cluster the ranks attach to (``auto`` or ``host:port``); empty: the local leader starts a
    private local Ray instance that the other ranks of its node join (``num_workers > 0`` only)."""
    ray_namespace: str = "lavla-data"
    """Ray namespace holding the named decoder actors."""
    service_name: str = ""
    """Name of the decoder service (actors ``<name>/decoder-<i>``); ranks naming the same service
    share it. Empty: derived from the run's rendezvous and the plan, so runs never share one."""
    actor_lifetime: str = "job"
    """``job``: decoders die with the trainer; ``detached``: they outlive it (a long-lived service,
    removed with ``python -m lavla.data_service.service.ray_service --shutdown NAME``)."""
    worker_cpus: float = 1.0
    """CPUs Ray reserves per decoder actor."""
    max_request_retries: int = 5
    """Times one decode request is re-issued after its decoder died before the run fails (stops a
    sample that crashes its decoder every time from looping forever)."""
    log_sample_ids: bool = False
    """Write ``samples.jsonl`` (step, rank, sample id) into the run dir for exact-resume checks."""
    allow_new_plan: bool = False
    """On resume, accept a changed mixture (new plan fingerprint) and restart the data order."""

    def __post_init__(self) -> None:
        if self.future_out_of_range not in ("clamp", "drop"):
            raise ValueError(f"data.future_out_of_range must be 'clamp' or 'drop', got {self.future_out_of_range!r}")
        if self.normalization not in ("bounds_q99", "normal", "bounds"):
            raise ValueError(
                f"data.normalization must be 'bounds_q99', 'normal' or 'bounds', got {self.normalization!r}"
            )
        if self.on_bad_sample not in ("error", "skip"):
            raise ValueError(f"data.on_bad_sample must be 'error' or 'skip', got {self.on_bad_sample!r}")
        if self.action_horizon < 1:
            raise ValueError(f"data.action_horizon must be >= 1, got {self.action_horizon}")
        if self.latent_cache_mb < 0:
            raise ValueError(f"data.latent_cache_mb must be >= 0, got {self.latent_cache_mb}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.actor_lifetime not in ("job", "detached"):
            raise ValueError(f"data.actor_lifetime must be 'job' or 'detached', got {self.actor_lifetime!r}")
        if not self.worker_cpus > 0:
            raise ValueError(f"data.worker_cpus must be > 0, got {self.worker_cpus}")
        if self.max_request_retries < 0:
            raise ValueError(f"data.max_request_retries must be >= 0, got {self.max_request_retries}")
        if not self.datasets:
            raise ValueError("data.datasets is empty: the mixture needs at least one dataset")
