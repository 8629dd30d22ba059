"""The training loop around one DeepSpeed engine: data -> recipe.forward -> backward/step,
metrics every N steps, checkpoints on a cadence, on preemption signals and at the end."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from trainer import distributed as dist_utils
from trainer.checkpoint import CheckpointManager, find_resume_checkpoint
from trainer.config import PretrainConfig
from trainer.config_io import dump_config
from trainer.deepspeed_config import build_deepspeed_config, gradient_accumulation_steps, parameter_groups
from trainer.metrics import MetricAccumulator, MetricsSink
from trainer.model_hooks import QuantizerHooks
from trainer.signals import PreemptionFlag

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; names the step and the offending loss terms."""


def _setup_logging() -> None:
    level = logging.INFO if dist_utils.is_main() else logging.WARNING
    logging.basicConfig(level=level, format=f"[%(asctime)s rank{dist_utils.rank()}] %(message)s",
                        datefmt="%H:%M:%S", force=True)
    for noisy in ("DeepSpeed", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _move(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _check_finite(loss: torch.Tensor, metrics: dict[str, Any], step: int) -> None:
    if torch.isfinite(loss.detach()).all():
        return
    bad = [k for k, v in metrics.items() if isinstance(v, torch.Tensor) and not torch.isfinite(v.detach()).all()]
    raise NonFiniteLossError(
        f"non-finite loss at step {step}" + (f" in {', '.join(sorted(bad))}" if bad else "")
    )


def run(cfg: PretrainConfig) -> dict[str, Any]:
    """Train according to ``cfg``; returns a summary (final step, last metrics)."""
    import deepspeed  # deferred: importing it probes accelerators

    from data_service.pipeline import build_data
    from model.factory import build_model

    dist_utils.init_distributed()
    _setup_logging()
    rank, world = dist_utils.rank(), dist_utils.world_size()
    run_dir = Path(cfg.run.dir)
    config_yaml = dump_config(cfg)

    resume_from = find_resume_checkpoint(cfg.resume, run_dir)  # fails fast on a dirty run dir
    dist_utils.barrier()
    if dist_utils.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        tmp = run_dir / ".config.yaml.tmp"
        tmp.write_text(config_yaml)
        os.replace(tmp, run_dir / "config.yaml")
    dist_utils.barrier()

    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    accum = gradient_accumulation_steps(cfg, world)
    data = build_data(cfg.data, rank=rank, world_size=world, micro_batch_size=cfg.trainer.micro_batch_size,
                      grad_accum=accum, is_local_leader=dist_utils.local_rank() == 0, barrier=dist_utils.barrier)
    model = build_model(cfg.model, cfg.data)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model %s: %.2fM parameters (%.2fM trainable); world %d, micro %d x accum %d = global %d",
             type(model).__name__, n_params / 1e6, n_train / 1e6, world, cfg.trainer.micro_batch_size, accum,
             cfg.trainer.global_batch_size)

    ds_config = build_deepspeed_config(cfg, world)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=parameter_groups(model, cfg.optim.weight_decay), config=ds_config)
    device = engine.device
    quantizer_hooks = QuantizerHooks(engine.module, cfg.trainer.zero.stage)

    ckpt = CheckpointManager(run_dir, cfg.checkpoint.keep_last)
    start_step = 0
    if resume_from is not None:
        state = ckpt.load(engine, resume_from)
        start_step = int(state["step"])
        data.client.load_state_dict(state["data"], allow_new_plan=cfg.data.allow_new_plan)
    # Per-rank RNG streams differ (noise samples) but are reproducible from the seed.
    if resume_from is None:
        torch.manual_seed(cfg.run.seed * 1000 + rank + 1)

    sink = MetricsSink(run_dir, cfg, json.loads(json.dumps(_plain(cfg))), start_step)
    samples_file = open(run_dir / f"samples.rank{rank}.jsonl", "a", buffering=1) if cfg.data.log_sample_ids else None
    preempt = PreemptionFlag()
    if cfg.checkpoint.save_on_signal:
        preempt.install()

    def save(step: int) -> None:
        state = {"step": step, "world_size": world, "data": data.client.state_dict(),
                 "global_batch_size": cfg.trainer.global_batch_size}
        ckpt.save(engine, step, state, config_yaml, data.normalization_stats())

    acc = MetricAccumulator()
    window_t0 = time.perf_counter()
    window_wait = 0.0
    window_steps = 0
    last_record: dict[str, Any] = {}
    step = start_step
    exit_reason = "max_steps"
    engine.train()
    try:
        while step < cfg.trainer.max_steps:
            for micro in range(accum):
                t0 = time.perf_counter()
                batch = data.client.next_micro_batch()
                window_wait += time.perf_counter() - t0
                if samples_file is not None:
                    samples_file.write(json.dumps({"step": step, "micro": micro, "rank": rank,
                                                   "sample_ids": batch["sample_id"].tolist()}) + "\n")
                loss, metrics = engine(_move(batch, device))
                _check_finite(loss, metrics, step)
                engine.backward(loss)
                engine.step()
                acc.add({"loss": loss, **metrics})
            data.client.step_done()
            acc.add(quantizer_hooks.after_step())
            step += 1
            window_steps += 1

            if step % cfg.trainer.log_every == 0 or step == cfg.trainer.max_steps:
                reduced = acc.reduce()
                elapsed = time.perf_counter() - window_t0
                grad_norm = engine.get_global_grad_norm()
                record = {
                    "step": step,
                    **reduced,
                    "lr": float(scheduler.get_last_lr()[0]) if scheduler is not None else cfg.optim.lr,
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "samples_per_s": window_steps * cfg.trainer.global_batch_size / elapsed,
                    "step_time_s": elapsed / window_steps,
                    "data_wait_frac": window_wait / elapsed,
                    "consumed_samples": data.client.consumed,
                    "epoch": data.plan.epoch_of(data.client.consumed),
                    **{k: float(v) for k, v in zip(*_reduce_data_stats(data.stats.pop()))},
                    "time": time.time(),
                }
                sink.write(record)
                last_record = record
                window_t0, window_wait, window_steps = time.perf_counter(), 0.0, 0

            stop = dist_utils.any_rank(preempt.requested)
            if stop or (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0) or (
                step == cfg.trainer.max_steps and cfg.checkpoint.save_final
            ):
                save(step)
            if stop:
                exit_reason = "preempted"
                log.warning("checkpointed step %d after a preemption signal; exiting", step)
                break
    finally:
        data.client.close()
        sink.close()
        if samples_file is not None:
            samples_file.close()
    dist_utils.barrier()
    log.info("done: step %d (%s)", step, exit_reason)
    return {"step": step, "exit_reason": exit_reason, "last": last_record}


def _reduce_data_stats(stats: dict[str, float]) -> tuple[list[str], list[float]]:
    keys = sorted(stats)
    return keys, dist_utils.mean_over_ranks([stats[k] for k in keys])


def _plain(obj: Any) -> Any:
    """Dataclass tree -> plain dict (for wandb's config panel)."""
    import dataclasses

    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
