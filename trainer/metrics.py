"""Metric aggregation and sinks: console, ``metrics.jsonl`` and (optionally) wandb.

Recipes return a flat dict of scalars per micro step; the trainer sums them between log steps,
averages over ranks once per log step (one small all-reduce), and hands one record to the sinks.
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

from trainer import distributed as dist_utils
from trainer.config import LoggingConfig, PretrainConfig

log = logging.getLogger(__name__)


def to_float(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().item())
    return float(v)


class MetricAccumulator:
    """Running sums of per-micro-step metrics between two log steps."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: Mapping[str, Any]) -> None:
        for k, v in metrics.items():
            self._sums[k] += to_float(v)
            self._counts[k] += 1

    def reduce(self) -> dict[str, float]:
        """Mean over micro steps, then over ranks (collective; key sets must agree across ranks)."""
        keys = sorted(self._sums)
        local = [self._sums[k] / max(1, self._counts[k]) for k in keys]
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

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def format_console(r: Mapping[str, Any]) -> str:
    parts = [f"step {r['step']:>6d}", f"loss {r['loss']:.4f}"]
    for k in sorted(r):
        if k.startswith("loss/"):
            parts.append(f"{k[5:]} {r[k]:.4f}")
    parts.append(f"lr {r['lr']:.2e}")
    parts.append(f"{r['samples_per_s']:.1f} samples/s")
    parts.append(f"data-wait {100 * r['data_wait_frac']:.0f}%")
    return " | ".join(parts)
