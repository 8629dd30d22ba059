"""Metric aggregation and sinks: console, ``metrics.jsonl`` and (optionally) wandb.

Recipes return a flat dict of scalars per micro step; the trainer sums them between log steps
(as device tensors: no host sync per micro step), averages over ranks once per log step (one
small all-reduce), and hands one record to the sinks.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

import torch

from lavla.trainer import distributed as dist_utils
from lavla.trainer.config import LoggingConfig, PretrainConfig

log = logging.getLogger(__name__)


class MetricAccumulator:
    """Running sums of per-micro-step metrics between two log steps."""

    def __init__(self) -> None:
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: Mapping[str, Any]) -> None:
        for k, v in metrics.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            self._sums[k] = self._sums[k] + v if k in self._sums else v
            self._counts[k] += 1

    def reduce(self) -> dict[str, float]:
        """Mean over micro steps, then over ranks (collective; key sets must agree across ranks)."""
        keys = sorted(self._sums)
        sums = [self._sums[k] for k in keys]
        tensors = [v.reshape(()) for v in sums if isinstance(v, torch.Tensor)]
        # One device-to-host copy for all tensor metrics instead of one sync per key.
        host = iter(torch.stack([t.to(tensors[0].device) for t in tensors]).cpu().tolist() if tensors else [])
        local = [(next(host) if isinstance(v, torch.Tensor) else v) / max(1, self._counts[k])
                 for k, v in zip(keys, sums)]
        values = dist_utils.mean_over_ranks(local)
        self._sums.clear()
        self._counts.clear()
        return dict(zip(keys, values))


class MetricsSink:
    """Writes one JSON object per log step; console and wandb mirror it. Rank 0 only."""

    def __init__(self, run_dir: Path, cfg: PretrainConfig, config_dict: dict[str, Any], resumed_step: int) -> None:
        self.enabled = dist_utils.is_main()
        self.logging_cfg: LoggingConfig = cfg.logging
        self._wandb = None
        self._file = None
        if not self.enabled:
            return
        self._file = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if self.logging_cfg.wandb.enabled:
            self._wandb = self._init_wandb(run_dir, cfg, config_dict)

    @staticmethod
    def _init_wandb(run_dir: Path, cfg: PretrainConfig, config_dict: dict[str, Any]) -> Any:
        try:
            import wandb
        except ImportError:
            log.warning("logging.wandb.enabled but wandb is not installed (pip install '.[wandb]'); skipping")
            return None
        w = cfg.logging.wandb
        if not w.project:
            os.environ.setdefault("WANDB_MODE", "offline")  # never block training on a network
        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else None
        try:
            run = wandb.init(project=w.project or "latent-vla", entity=w.entity or None, dir=str(run_dir),
                             name=cfg.run.name or run_dir.name, config=config_dict, id=run_id, resume="allow")
        except Exception:  # a wandb outage must not stop a week-long job
            log.warning("wandb.init failed; continuing without wandb", exc_info=True)
            return None
        id_file.write_text(run.id)
        return run

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        assert self._file is not None
        self._file.write(json.dumps(clean) + "\n")
        if self.logging_cfg.console:
            log.info(format_console(record))
        if self._wandb is not None:
            try:
                self._wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])
            except Exception:
                log.warning("wandb.log failed; disabling wandb for this run", exc_info=True)
                self._wandb = None

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """Mirror media images to wandb (the PNG files are written by the trainer)."""
        if not self.enabled or self._wandb is None or not images:
            return
        try:
            import wandb

            self._wandb.log({k: wandb.Image(v) for k, v in images.items()}, step=step)
        except Exception:
            log.warning("wandb image logging failed", exc_info=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def format_console(r: Mapping[str, Any]) -> str:
    """One line per log step: losses, lr, grad norm, throughput, data wait, MFU, skips."""
    parts = [f"step {r['step']:>6d}"]
    if r.get("loss") is not None:
        parts.append(f"loss {r['loss']:.4f}")
    for k in sorted(r):
        if k.startswith("loss/") and r[k] is not None:
            parts.append(f"{k[5:]} {r[k]:.4f}")
    if r.get("lr") is not None:
        parts.append(f"lr {r['lr']:.2e}")
    if r.get("grad_norm") is not None:
        parts.append(f"gnorm {r['grad_norm']:.3f}")
    parts.append(f"{r.get('samples_per_s', 0.0):.1f} samples/s")
    if r.get("tflops") is not None:
        mfu = f" (MFU {100 * r['mfu']:.1f}%)" if r.get("mfu") is not None else ""
        parts.append(f"{r['tflops']:.3g} TFLOP/s{mfu}")
    parts.append(f"data-wait {100 * r.get('data_wait_frac', 0.0):.0f}%")
    if r.get("nonfinite/skipped_steps"):
        parts.append(f"skipped {int(r['nonfinite/skipped_steps'])}")
    return " | ".join(parts)
