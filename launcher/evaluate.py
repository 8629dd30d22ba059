"""Evaluate a trained policy on held-out episodes: metrics as JSON on stdout plus a Markdown report.

    python -m lavla.launcher.evaluate --checkpoint <export dir | run dir | checkpoint dir> [--data CONFIG.yaml]
        [--split val] [--max-batches N] [--batch-size B] [--out DIR] [--seed S] [--device cpu] [--data.x=...]

* ``--checkpoint``: a policy export (``python -m lavla.launcher.export_policy``; loaded with
  ``model.policy_io.load_policy``), or a run / checkpoint directory, exported first into a temporary
  directory (``trainer.export.export_policy``: the run's newest complete checkpoint).
* ``--data``: a config YAML whose ``data`` section names the datasets (e.g. ``configs/quickstart.yaml``
  or a run's ``config.yaml``); default: the policy's own training config. ``--data.<field>=value``
  overrides apply on top. Its window shape (image size, horizon, padding widths) must be the model's.
* ``--split``: every mixture dataset is read from this split (TFDS syntax; default ``val``, which
  the synthetic world has). Batches are built in-process with the data pipeline (``build_data``).
* ``--max-batches``: 0 (default) = one pass over the split's windows, rounded up to whole batches
  (the last batch continues into the next pass of the split's sample plan).

Writes ``eval_report.md`` (+ PNG plots) and ``eval_metrics.json`` into ``--out`` (default
``<checkpoint>/eval``). Exit codes: 0 done, 2 bad path / config / mismatch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import tempfile
from pathlib import Path
from typing import Any


EXIT_BAD_INPUT = 2


class EvalInputError(RuntimeError):
    """A path, config or data set that cannot be evaluated (exit code 2)."""


def _is_export(path: Path) -> bool:
    return (path / "export.json").is_file()


def load_any_policy(path: Path, tmp: Path, device: str) -> Any:
    """A ``LoadedPolicy`` from an export dir, or from a run / checkpoint dir via a temporary export."""
    from lavla.model.policy_io import PolicyLoadError, load_policy

    if not path.exists():
        raise EvalInputError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise EvalInputError(f"{path}: not a directory (expected a policy export, a run or a checkpoint directory)")
    try:
        if _is_export(path):
            return load_policy(path, device)
        from lavla.trainer.export import ExportError, export_policy

        try:
            with contextlib.redirect_stdout(sys.stderr):  # importing deepspeed logs on stdout; keep it for JSON
                export_policy(path, tmp / "export")
        except (ExportError, FileNotFoundError) as e:
            raise EvalInputError(f"{path}: not a policy export (no export.json) and not an exportable run or "
                                 f"checkpoint directory: {e}") from e
        return load_policy(tmp / "export", device)
    except PolicyLoadError as e:
        raise EvalInputError(str(e)) from e


def resolve_data_config(policy: Any, data_yaml: str | None, overrides: list[str]) -> Any:
    """The data config to evaluate with (``--data`` file or the policy's own) with ``overrides``."""
    from lavla.trainer.config_io import ConfigError, load_config

    if data_yaml is None:
        if policy.export_dir is None:
            raise EvalInputError("the policy has no export directory to read its config from; pass --data")
        data_yaml = str(policy.export_dir / "config.yaml")
    bad = [o for o in overrides if not o.startswith("--data.")]
    if bad:
        raise EvalInputError(f"unexpected arguments {bad}; only --data.<field>=value overrides are accepted")
    try:
        data_cfg = load_config(["--config", data_yaml, *overrides]).data
    except ConfigError as e:
        raise EvalInputError(f"--data: {e}") from e
    trained = policy.data_cfg
    mismatch = [f"data.{k}: model {getattr(trained, k)} vs {getattr(data_cfg, k)}"
                for k in ("image_size", "action_horizon", "max_action_dim", "max_proprio_dim")
                if getattr(trained, k) != getattr(data_cfg, k)]
    if mismatch:
        raise EvalInputError(f"{data_yaml}: the data's window shape is not the model's ({'; '.join(mismatch)})")
    return data_cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lavla.launcher.evaluate", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--checkpoint", required=True, help="policy export dir, run dir or checkpoint dir")
    p.add_argument("--data", default=None, help="config YAML whose data section to evaluate on (default: the "
                                                "policy's training config)")
    p.add_argument("--split", default="val", help="split every dataset is read from (TFDS syntax; default val)")
    p.add_argument("--max-batches", type=int, default=0, help="batches to evaluate; 0 = one pass over the split")
    p.add_argument("--batch-size", type=int, default=16, help="samples per batch")
    p.add_argument("--out", default=None, help="report directory (default <checkpoint>/eval)")
    p.add_argument("--seed", type=int, default=0, help="seed of the action sampler and the forward's noise")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1...)")
    args, overrides = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("DeepSpeed", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.max_batches < 0 or args.batch_size < 1:
        print("error: --max-batches must be >= 0 and --batch-size >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT

    from lavla.data_service.errors import DataError
    from lavla.data_service.pipeline import build_data
    from lavla.trainer.evaluate import (
        eval_data_config,
        evaluate,
        probe_horizon_of,
        take_batches,
        windows_per_pass,
        write_report,
    )

    ckpt = Path(args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="lavla-eval-") as tmp:
        try:
            policy = load_any_policy(ckpt, Path(tmp), args.device)
            data_cfg = eval_data_config(resolve_data_config(policy, args.data, overrides), args.split)
            try:
                bundle = build_data(data_cfg, rank=0, world_size=1, micro_batch_size=args.batch_size, grad_accum=1,
                                    is_local_leader=True, barrier=lambda: None)
            except (DataError, OSError, ValueError, KeyError) as e:
                raise EvalInputError(f"cannot read split {args.split!r} of the data: {e}") from e
        except EvalInputError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        n = args.max_batches or math.ceil(windows_per_pass(bundle) / args.batch_size)
        try:
            metrics = evaluate(policy.module, take_batches(bundle.client, n), normalizers=bundle.normalizers,
                               seed=args.seed, probe_horizon=probe_horizon_of(bundle, data_cfg))
        finally:
            bundle.client.close()
    out = Path(args.out) if args.out else ckpt / "eval"
    info = {"checkpoint": str(ckpt.resolve()), "recipe": policy.meta.get("recipe", "?"),
            "step": policy.meta.get("step", "?"), "split": args.split,
            "datasets": ", ".join(e.name for e in data_cfg.datasets), "batches": f"{n} x {args.batch_size}"}
    md = write_report(metrics, out, info=info)
    (out / "eval_metrics.json").write_text(json.dumps({"info": info, "metrics": _finite(metrics)}, indent=2))
    logging.getLogger(__name__).info("report: %s", md)
    print(json.dumps(_finite(metrics), indent=2, sort_keys=True))
    return 0


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN / inf -> null: stdout stays strict JSON."""
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}


if __name__ == "__main__":
    sys.exit(main())
