"""Typed configuration of a pretraining run: the root ``PretrainConfig`` and the trainer's sections.

Every field carries a docstring (shown by ``--help``). YAML recipes in ``configs/`` fill these
dataclasses; any field can be overridden on the command line as ``--section.field=value``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_service.config import DataConfig
from model.config import ModelConfig


def _default_model() -> ModelConfig:
    # The quickstart recipe; resolved lazily so recipe configs can register themselves first.
    return ModelConfig.get_choice_class("lara")()


@dataclass
class RunConfig:
    """Where a run writes and how it is identified."""

    dir: str = "runs/quickstart"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/ and profiler output go here."""
    name: str = ""
    """Human-readable run name (wandb run name); defaults to the run directory's basename."""
    seed: int = 0
    """Seed of model initialization and of the per-rank torch RNG (the data order has its own seed)."""


@dataclass
class OptimConfig:
    """AdamW with decay / no-decay parameter groups and a warmup + decay schedule."""

    lr: float = 1e-4
    """Peak learning rate."""
    weight_decay: float = 0.01
    """Decoupled weight decay for weight matrices; biases, norms and embeddings get none."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (LARA uses (0.95, 0.999))."""
    eps: float = 1e-8
    """AdamW epsilon."""
    schedule: str = "cosine"
    """``cosine`` (warmup then cosine to ``min_lr_ratio`` x lr) or ``constant`` (warmup then flat)."""
    warmup_steps: int = 0
    """Linear warmup length in optimizer steps."""
    min_lr_ratio: float = 0.1
    """Final lr of the cosine schedule as a fraction of the peak."""

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")


@dataclass
class ZeroConfig:
    """DeepSpeed ZeRO settings; the DeepSpeed JSON is generated from these fields."""

    stage: int = 3
    """ZeRO stage (3 shards parameters, gradients and optimizer state)."""
    overlap_comm: bool = True
    """Overlap gradient reduction with the backward pass."""
    contiguous_gradients: bool = True
    """Copy gradients into a contiguous buffer as they are produced."""
    reduce_bucket_size: int = 500_000_000
    """Elements per gradient-reduction bucket (HF 'auto' rule: hidden^2)."""
    prefetch_bucket_size: int = 50_000_000
    """ZeRO-3 parameter prefetch bucket in elements (HF 'auto' rule: 0.9 x hidden^2)."""
    param_persistence_threshold: int = 100_000
    """ZeRO-3 keeps parameters smaller than this replicated (HF 'auto' rule: 10 x hidden)."""


@dataclass
class TrainerConfig:
    """The training loop."""

    max_steps: int = 300
    """Optimizer steps to run in total (a resumed run continues up to this number)."""
    global_batch_size: int = 16
    """Samples per optimizer step across all ranks (= micro_batch_size x grad accumulation x world size)."""
    micro_batch_size: int = 16
    """Samples per rank per forward pass; gradient accumulation fills the global batch."""
    precision: str = "fp32"
    """``fp32`` or ``bf16`` (mixed precision through DeepSpeed; quantizers stay fp32)."""
    gradient_clipping: float = 1.0
    """Global gradient-norm clip; 0 disables."""
    activation_checkpointing: bool = False
    """Recompute activations of transformer blocks in backward to save memory."""
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    """DeepSpeed ZeRO settings."""
    log_every: int = 10
    """Log metrics every N optimizer steps."""
    max_nonfinite_steps: int = 5
    """Stop after this many consecutive steps with a non-finite loss (each one is skipped)."""

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"trainer.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.max_steps < 0:
            raise ValueError(f"trainer.max_steps must be >= 0, got {self.max_steps}")
        if self.micro_batch_size < 1 or self.global_batch_size < 1:
            raise ValueError("trainer.micro_batch_size and trainer.global_batch_size must be >= 1")


@dataclass
class CheckpointConfig:
    """Checkpoints: engine state + data position + RNG + resolved config + normalization stats."""

    every_steps: int = 100
    """Save every N optimizer steps (0: only at the end and on SIGTERM/SIGUSR1)."""
    keep_last: int = 3
    """Keep the newest K complete checkpoints (older ones are deleted after a save completes)."""
    save_final: bool = True
    """Save when ``trainer.max_steps`` is reached."""
    save_on_signal: bool = True
    """SIGTERM / SIGUSR1 (SLURM preemption) trigger a checkpoint and a clean exit."""

    def __post_init__(self) -> None:
        if self.keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {self.keep_last}")


@dataclass
class WandbConfig:
    """Weights & Biases sink. Offline unless a project is configured; never blocks training."""

    enabled: bool = False
    """Log to wandb (requires the ``[wandb]`` extra)."""
    project: str = ""
    """wandb project; empty keeps the run offline (``WANDB_MODE=offline``)."""
    entity: str = ""
    """wandb entity (team); empty uses the default."""


@dataclass
class LoggingConfig:
    """Metric sinks: console and ``metrics.jsonl`` always; wandb by choice."""

    wandb: WandbConfig = field(default_factory=WandbConfig)
    """wandb sink."""
    console: bool = True
    """Print a metrics line on rank 0 every ``trainer.log_every`` steps."""


@dataclass
class PretrainConfig:
    """A whole pretraining run. ``deepspeed launcher/pretrain.py --config configs/<recipe>.yaml``."""

    run: RunConfig = field(default_factory=RunConfig)
    """Run directory, name and seed."""
    resume: str = "never"
    """``never``: start fresh (refuses a run dir with checkpoints); ``auto``: continue from the newest
    complete checkpoint in ``run.dir`` if there is one; or a path to a checkpoint directory."""
    data: DataConfig = field(default_factory=DataConfig)
    """Datasets, windowing and the sample plan."""
    model: ModelConfig = field(default_factory=_default_model)
    """The recipe (``type``) and its architecture."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Training loop and DeepSpeed engine."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint cadence and retention."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metric sinks."""
