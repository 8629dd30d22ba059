"""Fit LAPA's per-dimension quantile action bins on a training config's data and write the bins file.

    python -m lavla.launcher.fit_action_bins --config configs/lapa_action.yaml --out runs/lapa_action/bins.json
    python -m lavla.launcher.fit_action_bins --config CONFIG --num-bins 256 --max-samples 50000 --out bins.json [--data.seed=1 ...]

Actions are read exactly as training sees them (normalized, padded to ``data.max_action_dim``) by
``data_service.action_quantiles.sample_actions``; padded dims and steps past an episode's end are
left out of the fit. The defaults come from the config's model section when it has them
(``model.num_bins``, ``model.bins_fit_samples``; else 256 and 20000) and the seed from
``data.seed``. The JSON (``model.action_bins.QuantileActionBins.to_json``) is written atomically;
point ``model.bins_path`` at it. Any ``--section.field=value`` override of the training config is
accepted. Exit codes: 0 done, 2 config or argument error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


DEFAULT_NUM_BINS = 256
DEFAULT_MAX_SAMPLES = 20000


def fit_bins(actions: np.ndarray, valid: np.ndarray, num_bins: int) -> Any:
    """QuantileActionBins of ``actions`` [M, A] float restricted to ``valid`` [M, A] bool."""
    from lavla.model.action_bins import QuantileActionBins

    actions, valid = np.asarray(actions, dtype=np.float32), np.asarray(valid, dtype=bool)
    if actions.ndim != 2 or actions.shape != valid.shape:
        raise ValueError(f"expected actions and valid of one [M, A] shape, got {actions.shape} and {valid.shape}")
    if not valid.any():
        raise ValueError("no valid action sample to fit bins on (action-less datasets only?)")
    return QuantileActionBins.fit(np.where(valid, actions, np.nan), num_bins)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to a temporary file next to ``path`` and rename it over: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m lavla.launcher.fit_action_bins", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="training YAML (its data section is sampled)")
    p.add_argument("--out", required=True, help="bins JSON to write")
    p.add_argument("--num-bins", type=int, default=None, help=f"bins per dimension (default: model.num_bins or {DEFAULT_NUM_BINS})")
    p.add_argument("--max-samples", type=int, default=None,
                   help=f"action vectors to read (default: model.bins_fit_samples or {DEFAULT_MAX_SAMPLES})")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: data.seed)")
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    from lavla.trainer.config_io import ConfigError, load_config

    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(["--config", args.config, *overrides])
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    num_bins = args.num_bins if args.num_bins is not None else int(getattr(cfg.model, "num_bins", DEFAULT_NUM_BINS))
    max_samples = args.max_samples if args.max_samples is not None else int(getattr(cfg.model, "bins_fit_samples", DEFAULT_MAX_SAMPLES))
    seed = args.seed if args.seed is not None else cfg.data.seed
    if num_bins < 1 or max_samples < 1:
        print(f"error: --num-bins ({num_bins}) and --max-samples ({max_samples}) must be >= 1", file=sys.stderr)
        return 2

    from lavla.data_service.action_quantiles import sample_actions  # lazy: reads the datasets

    actions, valid = sample_actions(cfg.data, max_samples=max_samples, seed=seed)
    bins = fit_bins(actions, valid, num_bins)
    write_json_atomic(args.out, bins.to_json())
    used = bins.num_valid.tolist()
    print(f"fitted {num_bins} quantile bins on {len(actions)} action samples (seed {seed}); "
          f"bins used per dim {used}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
