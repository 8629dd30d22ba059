"""Entry point: ``deepspeed [--num_gpus N] launcher/pretrain.py --config configs/<recipe>.yaml [--a.b=v ...]``.

Also runs as plain ``python launcher/pretrain.py ...`` (one process) and as the console script
``lavla-pretrain``. All behaviour lives in ``trainer/``; this file only parses the config.
"""

from __future__ import annotations

import os
import sys

# Running as a script puts launcher/ (not the repo root) on sys.path; make the packages importable
# from a source checkout without requiring ``pip install -e .``.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def main(argv: list[str] | None = None) -> int:
    from launcher.exit_codes import EXIT_CONFIG_ERROR, EXIT_NONFINITE, EXIT_OK, EXIT_PREEMPTED
    from trainer.config_io import ConfigError, load_config

    args = sys.argv[1:] if argv is None else argv
    try:
        cfg = load_config(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    from trainer.loop import NonFiniteLossError, run

    try:
        summary = run(cfg)
    except NonFiniteLossError as e:  # a diagnosis, not a crash: no traceback
        print(f"training stopped: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    # A preemption checkpoint is "try again": the SLURM script requeues on it.
    return EXIT_PREEMPTED if summary.get("exit_reason") == "preempted" else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
