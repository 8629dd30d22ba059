"""The training loop around one DeepSpeed engine: data -> recipe.forward -> backward/step,
metrics every N steps, checkpoints on a cadence, on preemption signals and at the end.

Steps are numbered from 1 as logged and checkpointed: step N is the N-th optimizer step, and
``step_0000000N`` holds the state after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from lavla.data_service.atomic import atomic_write
from lavla.trainer import distributed as dist_utils
from lavla.trainer import faults
from lavla.trainer.batch_layout import batch_layout
from lavla.trainer.checkpoint import CheckpointManager, find_resume_checkpoint, needs_universal
from lavla.trainer.config import PretrainConfig
from lavla.trainer.config_io import dump_config
from lavla.trainer.deepspeed_config import gradient_accumulation_steps
from lavla.trainer.engine import build_engine, sync_lr_schedule
from lavla.model.recipe import capabilities_of
from lavla.trainer.evaluate import PeriodicEvaluator
from lavla.trainer.flops import count_flops, device_peak_flops
from lavla.trainer.media import collect_media, has_media, write_pngs
from lavla.trainer.membership import Heartbeat, RestartReport, read_last_progress
from lavla.trainer.metrics import MetricAccumulator, MetricsSink
from lavla.trainer.model_hooks import QuantizerHooks
from lavla.trainer.nonfinite import NonFiniteGuard, NonFiniteLossError
from lavla.trainer.profiling import StepProfiler
from lavla.trainer.run_summary import closing_message
from lavla.trainer.progress import ProgressBar
from lavla.trainer.signals import PreemptionFlag
from lavla.trainer.throughput import ThroughputModel, tokens_per_sample
from lavla.trainer.throughput_report import write_report
from lavla.trainer.timing import StepTimer, peak_memory_gib

log = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "run"]


def _setup_logging() -> None:
    level = logging.INFO if dist_utils.is_main() else logging.WARNING
    logging.basicConfig(level=level, format=f"[%(asctime)s rank{dist_utils.rank()}] %(message)s",
                        datefmt="%H:%M:%S", force=True)
    for noisy in ("DeepSpeed", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _move(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _write_run_config(run_dir: Path, config_yaml: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    atomic_write(run_dir / "config.yaml", config_yaml)


def run(cfg: PretrainConfig) -> dict[str, Any]:
    """Train according to ``cfg``; returns a summary (final step, exit reason, last metrics)."""
    from lavla.data_service.pipeline import build_data

    dist_utils.init_distributed()
    _setup_logging()
    world = dist_utils.world_size()
    if cfg.parallel.tensor_parallel_size > 1:
        from lavla.trainer.tensor_parallel import mpu

        layout = mpu.initialize(cfg.parallel.tensor_parallel_size, cfg.run.seed)
        log.info("tensor parallel %d x data parallel %d (this rank: TP %d, DP %d)", layout.tp_size,
                 layout.dp_size, layout.tp_rank, layout.dp_rank)
    # The batch, the sample plan and ZeRO are per model replica: sized by the data-parallel ranks.
    dp, dp_rank = dist_utils.data_parallel_size(), dist_utils.data_parallel_rank()
    run_dir = Path(cfg.run.dir)
    cfg = _apply_batch_layout(cfg, dp)
    config_yaml = dump_config(cfg)

    resume_from = find_resume_checkpoint(cfg.resume, run_dir)  # fails fast on a dirty run dir
    # Read before anyone trains (rank 0 rewrites it after each step); one reading for all ranks,
    # because the step that reports the restart logs, and logging is collective.
    previous = dist_utils.broadcast_object(read_last_progress(run_dir) if dist_utils.is_main() else None)
    universal = needs_universal(resume_from, world, cfg.checkpoint.convert_on_world_size_change,
                                cfg.parallel.tensor_parallel_size)
    dist_utils.barrier()
    if dist_utils.is_main():
        _write_run_config(run_dir, config_yaml)
    dist_utils.barrier()

    accum = gradient_accumulation_steps(cfg, dp)
    data = build_data(cfg.data, rank=dp_rank, world_size=dp, micro_batch_size=cfg.trainer.micro_batch_size,
                      grad_accum=accum, is_local_leader=dist_utils.local_rank() == 0, barrier=dist_utils.barrier)
    engine, scheduler = build_engine(cfg, dp, load_universal=universal)

    ckpt = CheckpointManager(run_dir, cfg.checkpoint.keep_last, cfg.checkpoint.convert_workers,
                             cfg.checkpoint.staging_dir)
    start_step, skipped_total = 0, 0
    if resume_from is not None:
        state = ckpt.load(engine, resume_from, cfg.run.seed, cfg.parallel.tensor_parallel_size)
        start_step = int(state["step"])
        skipped_total = int(state.get("nonfinite_skipped_total", 0))
        data.client.load_state_dict(state["data"], allow_new_plan=cfg.data.allow_new_plan)
        if int(state.get("global_batch_size", cfg.trainer.global_batch_size)) != cfg.trainer.global_batch_size:
            log.warning("global batch size changed %s -> %d on resume; the sample sequence continues, the lr "
                        "schedule counts optimizer steps",
                        state.get("global_batch_size"), cfg.trainer.global_batch_size)
    else:
        # Per-replica RNG streams differ (noise samples) but are reproducible from the seed; the TP
        # ranks of a replica share theirs (their collectives need the same inputs).
        torch.manual_seed(cfg.run.seed * 1000 + dp_rank + 1)
    sync_lr_schedule(scheduler, resumed=resume_from is not None)

    trainer = _Trainer(cfg, engine, data, ckpt, config_yaml, start_step, skipped_total, accum)
    if resume_from is not None and previous is not None:
        trainer.restart = RestartReport(previous, start_step, world,  # type: ignore[arg-type]
                                        announce=dist_utils.is_main())
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    dist_utils.barrier()
    log.info("done: step %d (%s)", summary["step"], summary["exit_reason"])
    if dist_utils.is_main() and cfg.logging.console:
        print(closing_message(summary, run_dir, acts=capabilities_of(engine.module).closed_loop), flush=True)
    return summary


def _apply_batch_layout(cfg: PretrainConfig, world: int) -> PretrainConfig:
    """``cfg`` with the batch layout this world size runs (the configured one, unless
    ``trainer.batch_layout=nearest`` had to change it; the change is logged)."""
    t = cfg.trainer
    layout = batch_layout(t.global_batch_size, t.micro_batch_size, world, t.batch_layout)
    if not layout.change:
        return cfg
    log.warning("batch layout for %d data-parallel rank(s): %s; running %s", world, layout.change, layout.describe())
    trainer = dataclasses.replace(t, global_batch_size=layout.global_batch_size,
                                  micro_batch_size=layout.micro_batch_size)
    return dataclasses.replace(cfg, trainer=trainer)


class _Trainer:
    """State of one training run between engine setup and exit."""

    def __init__(self, cfg: PretrainConfig, engine: Any, data: Any, ckpt: CheckpointManager,
                 config_yaml: str, start_step: int, skipped_total: int, accum: int) -> None:
        self.cfg, self.engine, self.data, self.ckpt = cfg, engine, data, ckpt
        self.config_yaml, self.start_step, self.accum = config_yaml, start_step, accum
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.run_dir = Path(cfg.run.dir)
        self.device = engine.device
        self.quantizer_hooks = QuantizerHooks(engine.module, cfg.trainer.zero.stage)
        self.guard = NonFiniteGuard(cfg.trainer.max_nonfinite_steps, skipped_total)
        self.timer = StepTimer(sync=cfg.logging.sync_timing)
        self.acc = MetricAccumulator()
        self.profiler = StepProfiler(cfg.profile, self.run_dir, self.rank)
        device_name, peak = device_peak_flops(cfg.logging.peak_tflops)
        self.device_name = device_name
        self.rates = ThroughputModel(cfg.trainer.global_batch_size, self.world, accum, peak_flops=peak)
        self.sink = MetricsSink(self.run_dir, cfg, json.loads(json.dumps(_plain(cfg))), start_step)
        self.bar = ProgressBar(cfg.logging.progress_bar and dist_utils.is_main(), cfg.trainer.max_steps, start_step)
        self.samples_file = (open(self.run_dir / f"samples.rank{self.rank}.jsonl", "a", buffering=1)
                             if cfg.data.log_sample_ids else None)
        self.preempt = PreemptionFlag()
        if cfg.checkpoint.save_on_signal:
            self.preempt.install()
        self.media = cfg.logging.media_every > 0 and has_media(engine.module)
        self.window_steps = 0
        self.last_record: dict[str, Any] = {}
        self.evaluator = PeriodicEvaluator(cfg, self.run_dir, self.device) if cfg.eval.every_steps > 0 else None
        self.pending_eval: dict[str, float] = {}
        self.heartbeat = Heartbeat(self.run_dir, self.world, enabled=dist_utils.is_main())
        self.restart: RestartReport | None = None

    # --- one optimizer step ------------------------------------------------------------------
    def _train_step(self, step: int) -> tuple[bool, dict[str, Any]]:
        """Run optimizer step ``step``; returns (skipped, its last micro batch)."""
        engine, guard, timer = self.engine, self.guard, self.timer
        faults.maybe_kill("kill_at_step", step)
        faults.maybe_slow()
        guard.begin_step()
        step_metrics: list[dict[str, Any]] = []
        loss_nonfinite = False
        batch: dict[str, Any] = {}
        for micro in range(self.accum):
            with timer.phase("data"):
                batch = self.data.client.next_micro_batch()
            if self.samples_file is not None:
                self.samples_file.write(json.dumps({"step": step, "micro": micro, "rank": self.rank, "world": self.world,
                                                    "sample_ids": batch["sample_id"].tolist()}) + "\n")
            batch = faults.maybe_poison_batch(_move(batch, self.device), step, self.rank, micro)
            measure = self.rates.flops_per_micro_step is None and self.cfg.logging.measure_flops and micro == 0
            with count_flops() if measure else contextlib.nullcontext() as flops:
                with timer.phase("forward"):
                    loss, metrics = engine(batch)
                guard.observe(loss)
                step_metrics.append({"loss": loss.detach(), **metrics})
                if micro == self.accum - 1:
                    loss_nonfinite = guard.any_rank_nonfinite()  # the step's one collective decision
                    if loss_nonfinite:
                        loss = guard.poison(loss)
                with timer.phase("backward"):
                    engine.backward(loss)
            if measure:
                counted = flops()
                self.rates.flops_per_micro_step = counted.total
                log.info("measured %.3g FLOPs per micro step per rank (forward + backward%s)", counted.total,
                         f"; {counted.recompute:.3g} recomputed by activation checkpointing, excluded"
                         if counted.recompute else "")
            with timer.phase("optimizer"):
                engine.step()
        skipped = guard.end_step(step, engine.was_step_applied(), loss_nonfinite, step_metrics)
        if not skipped:
            for m in step_metrics:
                self.acc.add(m)
        self.acc.add(self.quantizer_hooks.after_step())
        self.data.client.step_done()
        return skipped, batch

    # --- the loop ----------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        step = self.start_step
        exit_reason = "max_steps"
        self.engine.train()
        while step < cfg.trainer.max_steps:
            n = step + 1
            self.profiler.step_started(n)
            self.timer.sync = cfg.logging.sync_timing or self.profiler.active(n)
            skipped, batch = self._train_step(n)
            step = n
            phases = self.timer.end_step()
            self.window_steps += 1
            self.heartbeat.beat(step)
            restart_event = self.restart.step_done(step, phases["step"]) if self.restart is not None else None
            if restart_event:
                self.pending_eval.update(restart_event)
            if self.profiler.step_finished(step, phases):
                self._write_profile_report()
            evaluated = self.evaluator is not None and self.evaluator.due(step)
            if evaluated:
                self._evaluate(step)
            if step % cfg.trainer.log_every == 0 or step == cfg.trainer.max_steps or evaluated or restart_event:
                self._log(step)
            if self.media and step % cfg.logging.media_every == 0:
                self._write_media(step, batch)
            self.bar.update(self.last_record.get("loss") if self.last_record.get("step") == step else None)

            stop = dist_utils.any_rank(self.preempt.requested)
            if stop or (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0) or (
                step == cfg.trainer.max_steps and cfg.checkpoint.save_final
            ):
                self._save(step)
            if stop:
                exit_reason = "preempted"
                log.warning("checkpointed step %d after a preemption signal; exiting", step)
                break
        return {"step": step, "exit_reason": exit_reason, "last": self.last_record}

    def _evaluate(self, step: int) -> None:
        """Held-out evaluation on every rank (collective); ``_log`` writes it with this step's record."""
        assert self.evaluator is not None
        with self.timer.paused():  # evaluation stays out of samples/s and the step-time breakdown
            self.pending_eval.update(self.evaluator.run(self.engine.module, step))

    def _save(self, step: int) -> None:
        if step == self.start_step:
            return  # the checkpoint we resumed from already holds this state
        state = {"step": step, "world_size": self.world, "tensor_parallel_size": self.cfg.parallel.tensor_parallel_size,
                 "data": self.data.client.state_dict(),
                 "global_batch_size": self.cfg.trainer.global_batch_size,
                 "nonfinite_skipped_total": self.guard.skipped_total}
        self.ckpt.save(self.engine, step, state, self.config_yaml, self.data.normalization_stats())
        self.pending_eval["checkpoint/blocking_s"] = self.ckpt.last_blocking_s

    def _log(self, step: int) -> None:
        reduced = self.acc.reduce()
        times = self.timer.pop_window(self.window_steps)
        tps = tokens_per_sample(self.engine.module, reduced, self.cfg.trainer.micro_batch_size)
        rates = self.rates.rates(self.window_steps, times["time/window_s"], tps)
        mem = peak_memory_gib()
        mem = dict(zip(mem, dist_utils.max_over_ranks(list(mem.values()))))
        data_keys, data_values = _reduce_data_stats(self.data.stats.pop())
        grad_norm = self.engine.get_global_grad_norm()
        record = {
            "step": step,
            **reduced,
            "lr": float(self.engine.get_lr()[0]),  # of the next update
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            **rates,
            "step_time_s": times["time/step_s"],
            "data_wait_frac": times["time/data_s"] / max(times["time/step_s"], 1e-12),
            **{k: v for k, v in times.items() if k != "time/window_s"},
            **mem,
            **self.guard.pop_window(),
            "consumed_samples": self.data.client.consumed,
            "epoch": self.data.plan.epoch_of(self.data.client.consumed),
            **dict(zip(data_keys, data_values)),
            "device": self.device_name,
            "world_size": self.world,
            "time": time.time(),
            **self.pending_eval,
        }
        self.pending_eval = {}
        self.sink.write(record)
        self.last_record = record
        self.window_steps = 0

    def _write_media(self, step: int, batch: dict[str, Any]) -> None:
        images = collect_media(self.engine.module, batch)  # every rank: it runs the model
        if dist_utils.is_main():
            write_pngs(self.run_dir / "media", step, images)
            self.sink.write_images(step, images)

    def _write_profile_report(self) -> None:
        if not dist_utils.is_main():
            return
        steps = self.profiler.steps
        mean_step = sum(s["step"] for s in steps) / len(steps)
        tps = float(self.last_record.get("tokens_per_sample", 1.0))
        summary = {"device": self.device_name, "world size": self.world,
                   "global batch (samples)": self.cfg.trainer.global_batch_size,
                   "micro batch x accumulation": f"{self.cfg.trainer.micro_batch_size} x {self.accum}",
                   **self.rates.rates(len(steps), mean_step * len(steps), tps), **peak_memory_gib(reset=False)}
        md, png = write_report(self.profiler.out_dir, steps, summary, self.profiler.top_ops)
        log.info("throughput report: %s%s", md, f", {png}" if png else "")

    def close(self) -> None:
        try:
            self.ckpt.wait_for_upload()  # the run's last checkpoint must be complete before it exits
        except RuntimeError:
            log.exception("the last staged checkpoint did not complete; a resume starts from the one before")
        self.profiler.stop()
        self.data.client.close()
        if self.evaluator is not None:
            self.evaluator.close()
        self.sink.close()
        self.bar.close()
        if self.samples_file is not None:
            self.samples_file.close()


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
