"""Typed configuration of a pretraining run: the root ``PretrainConfig`` and the trainer's sections.

Every field carries a docstring (shown by ``--help``). YAML recipes in ``configs/`` fill these
dataclasses; any field can be overridden on the command line as ``--section.field=value``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lavla.data_service.config import DataConfig
from lavla.model.config import ModelConfig


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
    implementation: str = "torch"
    """``torch``: torch.optim.AdamW (foreach), nothing to compile; ``deepspeed_fused``: DeepSpeed's
    FusedAdam, which JIT-compiles a C++ (CPU) or CUDA op on first use: a minute per fresh machine,
    a CUDA toolchain on GPU, and a build lock that a killed job can leave behind."""

    def __post_init__(self) -> None:
        if self.implementation not in ("torch", "deepspeed_fused"):
            raise ValueError(f"optim.implementation must be 'torch' or 'deepspeed_fused', got {self.implementation!r}")
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

    def __post_init__(self) -> None:
        # Stage 0 has no DeepSpeed overflow check, which the non-finite step skip relies on.
        if self.stage not in (1, 2, 3):
            raise ValueError(f"trainer.zero.stage must be 1, 2 or 3, got {self.stage}")


@dataclass
class ParallelConfig:
    """Model parallelism inside a replica (megatron-core, the ``tp`` extra); ZeRO shards across
    replicas. ``lavla-plan-parallel`` says when TP pays; README "Tensor parallelism"."""

    tensor_parallel_size: int = 1
    """Ranks that split each layer of the text stack and the DiT head (heads and MLP columns).
    Must divide the world size and the KV heads; adjacent ranks form a group, so keep it within a
    node (<= GPUs per node). The data-parallel size is world / TP."""
    sequence_parallel: bool = False
    """With TP > 1, also shard the text stack's norms and residual activations along the sequence
    (activation memory / TP, same communication volume)."""

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError(f"parallel.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.sequence_parallel and self.tensor_parallel_size == 1:
            raise ValueError("parallel.sequence_parallel needs parallel.tensor_parallel_size > 1")


@dataclass
class TrainerConfig:
    """The training loop."""

    max_steps: int = 300
    """Optimizer steps to run in total (a resumed run continues up to this number)."""
    global_batch_size: int = 16
    """Samples per optimizer step across all ranks (= micro_batch_size x grad accumulation x world size)."""
    micro_batch_size: int = 16
    """Samples per rank per forward pass; gradient accumulation fills the global batch."""
    batch_layout: str = "exact"
    """``exact``: a global batch the world size does not divide is an error. ``nearest``: the job
    keeps the global batch with a smaller micro batch where it can, else takes the nearest global
    batch the world size divides, and logs the change (elastic jobs, whose size is not chosen)."""
    precision: str = "fp32"
    """``fp32`` or ``bf16`` (mixed precision through DeepSpeed; quantizers stay fp32)."""
    gradient_clipping: float = 1.0
    """Global gradient-norm clip; 0 disables."""
    activation_checkpointing: bool = False
    """Recompute activations of selected blocks in backward (torch non-reentrant checkpointing) to
    save memory. Blocks: those the model lists in a ``checkpointable_blocks`` attribute, else every
    instance of a class named in ``checkpoint_block_classes``."""
    checkpoint_block_classes: list[str] = field(default_factory=lambda: ["TransformerBlock"])
    """Class names of the modules to checkpoint when the model does not list ``checkpointable_blocks``."""
    zero_init: bool = False
    """Build the model inside ``deepspeed.zero.Init`` (ZeRO-3 only): each rank allocates only its
    parameter shard, so a model larger than one device's memory can be constructed. Each module's
    parameters are partitioned as soon as its own ``__init__`` returns, so init code that edits a
    *child's* parameters afterwards (e.g. zeroing a child Linear) edits empty shards and is lost:
    such inits belong in the child's ``reset_parameters`` or inside ``GatheredParameters``. Initial
    weights are not bit-identical to a plain build; weights loaded later are unaffected. Hugging
    Face backbones build and load their pretrained weights shard-wise (``trainer/zero_init.py``);
    LoRA with added tokens is refused (their rows start as copies of partitioned rows)."""
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    """DeepSpeed ZeRO settings."""
    log_every: int = 10
    """Log metrics every N optimizer steps."""
    max_nonfinite_steps: int = 5
    """A step whose loss (on any rank) or gradient is NaN/inf is skipped: no parameter update, the
    batch counts as consumed. This many consecutive skipped steps stop the run with an error naming
    the loss terms and the step."""

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"trainer.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.max_steps < 0:
            raise ValueError(f"trainer.max_steps must be >= 0, got {self.max_steps}")
        if self.micro_batch_size < 1 or self.global_batch_size < 1:
            raise ValueError("trainer.micro_batch_size and trainer.global_batch_size must be >= 1")
        if self.batch_layout not in ("exact", "nearest"):
            raise ValueError(f"trainer.batch_layout must be 'exact' or 'nearest', got {self.batch_layout!r}")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"trainer.max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        if self.log_every < 1:
            raise ValueError(f"trainer.log_every must be >= 1, got {self.log_every}")
        if self.zero_init and self.zero.stage != 3:
            raise ValueError("trainer.zero_init needs trainer.zero.stage=3 (it partitions parameters at construction)")


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
    convert_on_world_size_change: bool = True
    """Resuming with a different number of ranks converts the checkpoint to DeepSpeed's universal
    format once (into ``<checkpoint>/universal/``, by rank 0) and loads that; False refuses instead."""
    convert_workers: int = 1
    """Worker processes of the universal conversion (more is faster for big models, and uses more memory)."""
    staging_dir: str = ""
    """Node-local directory (local NVMe, or /dev/shm for small models) for cheap frequent checkpoints:
    each rank writes its part there and training goes on while a background thread moves it into
    the run dir; the checkpoint counts once every rank's part has arrived. Empty: write into the
    run dir directly, and training waits for the shared filesystem."""

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
    progress_bar: bool = True
    """A tqdm progress bar on rank 0 (only when stderr is a terminal; log lines print above it)."""
    media_every: int = 0
    """If the model has ``media(batch) -> {name: HxWx3 uint8}``, call it every N steps (all ranks:
    it runs the model) and write PNGs under ``<run.dir>/media/`` (and to wandb); 0 disables."""
    measure_flops: bool = True
    """Count the FLOPs of one real training step (torch FlopCounterMode, first step) for TFLOP/s and MFU."""
    peak_tflops: float = 0.0
    """Peak dense bf16 TFLOP/s per device for MFU; 0 = look the GPU up by name (unknown GPUs and CPU: no MFU)."""
    sync_timing: bool = False
    """Synchronize CUDA around forward / backward / optimizer so the step-time breakdown is exact
    (costs some throughput; profiling runs turn it on)."""

    def __post_init__(self) -> None:
        if self.media_every < 0:
            raise ValueError(f"logging.media_every must be >= 0, got {self.media_every}")


@dataclass
class ProfileConfig:
    """torch.profiler capture of a few steps plus a throughput report (Markdown + PNG) in the run dir."""

    steps: str = ""
    """``a:b`` profiles optimizer steps a..b inclusive (1-based, as logged); empty disables."""
    all_ranks: bool = False
    """Write a trace for every rank (default: rank 0 only; traces are large)."""
    record_shapes: bool = True
    """Record operator input shapes in the trace."""
    profile_memory: bool = False
    """Track tensor allocations in the trace (slower)."""
    with_stack: bool = False
    """Record Python stacks of operators (much larger traces)."""

    def window(self) -> tuple[int, int] | None:
        """``(first, last)`` profiled step, or None when profiling is off."""
        if not self.steps:
            return None
        a, sep, b = self.steps.partition(":")
        try:
            if not sep:  # a bare number is what unquoted YAML makes of "3:5"
                raise ValueError
            first, last = int(a), int(b)
        except ValueError:
            raise ValueError(f"profile.steps must look like 'a:b' (e.g. 3:5; quote it in YAML, where 3:5 "
                             f"is the base-60 number 185), got {self.steps!r}") from None
        if not 1 <= first <= last:
            raise ValueError(f"profile.steps needs 1 <= a <= b, got {self.steps!r}")
        return first, last

    def __post_init__(self) -> None:
        self.window()  # validate early, with the field's name in the message


@dataclass
class EvalConfig:
    """Periodic evaluation on held-out episodes (``trainer/evaluate.py``): ``eval/<metric>`` goes to the
    same sinks as the training metrics (metrics.jsonl, console, wandb)."""

    every_steps: int = 0
    """Evaluate every N optimizer steps and at ``trainer.max_steps`` (0 disables). Every rank evaluates
    its own shard of the held-out batches in lockstep (ZeRO-3 gathers parameters collectively) and
    the metric sums are all-reduced; the step's logged record carries the results."""
    split: str = "val"
    """Split every mixture dataset is read from for evaluation, in TFDS syntax (``val``, ``train[95%%:]``);
    it should hold other episodes than the training split. Decoded in-process (no Ray service)."""
    # (%% above: draccus hands field docstrings to argparse, which %-formats them for --help.)
    max_batches: int = 4
    """Micro batches (``trainer.micro_batch_size`` samples each) per rank per evaluation; every
    evaluation reads the same held-out samples (the first ones of the split's sample plan)."""
    report: bool = True
    """Rank 0 rewrites ``<run.dir>/eval/eval_report.md`` (metrics table, per-dim error and
    metric-over-steps plots) after each evaluation."""
    latent_labels: str = ""
    """Latent-label store for the eval split (recipes with offline latent labels). Episode indices are
    split-relative, so the training split's store cannot label held-out episodes: annotate the eval
    split into its own store. Empty keeps ``data.latent_labels``."""

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"eval.every_steps must be >= 0, got {self.every_steps}")
        if self.max_batches < 1:
            raise ValueError(f"eval.max_batches must be >= 1, got {self.max_batches}")


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
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Tensor / sequence parallelism (default: none, ZeRO alone)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint cadence and retention."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metric sinks."""
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    """Profiler capture and throughput report."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Periodic evaluation on a held-out split."""
