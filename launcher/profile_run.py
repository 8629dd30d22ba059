"""A short profiling job of any recipe: ``python -m lavla.launcher.profile_run --config configs/<recipe>.yaml
[--steps N] [--warmup W] [--a.b=value ...]`` (or ``deepspeed [--num_gpus G] launcher/profile_run.py ...``).

Runs N optimizer steps (default 8) without checkpoints or wandb, profiles the steps after the
first W (default 3, compilation and allocator warm-up), and writes into ``<run.dir>-profile/``
(or the ``--run.dir`` given): metrics.jsonl and ``profile/`` with the chrome trace, the
throughput report (``throughput.md``) and the step-time plot (``step_breakdown.png``).

(Not named ``launcher/profile.py``: ``deepspeed launcher/<script>.py`` puts ``launcher/`` first on
``sys.path``, where a ``profile.py`` would shadow the standard library module that torch imports.)
"""

from __future__ import annotations

import argparse
import sys


def profiling_config(cfg, steps: int, warmup: int, run_dir_given: bool):  # type: ignore[no-untyped-def]
    """The recipe's config turned into a profiling job (pure: returns a modified copy)."""
    import dataclasses

    if steps < 1 or not 0 <= warmup < steps:
        raise ValueError(f"need steps >= 1 and 0 <= warmup < steps, got steps={steps}, warmup={warmup}")
    run_dir = cfg.run.dir if run_dir_given else cfg.run.dir.rstrip("/") + "-profile"
    return dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, dir=run_dir),
        resume="never",
        trainer=dataclasses.replace(cfg.trainer, max_steps=steps, log_every=min(cfg.trainer.log_every, steps)),
        checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=0, save_final=False, save_on_signal=False),
        logging=dataclasses.replace(cfg.logging, sync_timing=True,
                                    wandb=dataclasses.replace(cfg.logging.wandb, enabled=False)),
        profile=dataclasses.replace(cfg.profile, steps=f"{warmup + 1}:{steps}"),
    )


def main(argv: list[str] | None = None) -> int:
    from lavla.trainer.config_io import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="python -m lavla.launcher.profile_run", add_help=False)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps to run")
    parser.add_argument("--warmup", type=int, default=3, help="steps before the profiled window")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(rest)
        cfg = profiling_config(cfg, args.steps, args.warmup, any(a.startswith("--run.dir") for a in rest))
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from lavla.trainer.loop import run

    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
