"""Entry point: ``deepspeed [--num_gpus N] launcher/pretrain.py --config configs/<recipe>.yaml [--a.b=v ...]``.

Also runs as plain ``python launcher/pretrain.py ...`` (one process), under ``torchrun`` (fixed or
elastic, ``--nnodes=MIN:MAX``) and as the console script ``lavla-pretrain``. All behaviour lives in
``trainer/``; this file only parses the config.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Run by path (``deepspeed launcher/pretrain.py``), Python puts the script's own folder first on sys.path,
    # where a module of ours (evaluate.py) would shadow an installed package of that name. The
    # project imports only as ``lavla.*``, so the entry goes.
    _HERE = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]


def main(argv: list[str] | None = None) -> int:
    from lavla.launcher.exit_codes import EXIT_CONFIG_ERROR, EXIT_NONFINITE, EXIT_OK, EXIT_PREEMPTED
    from lavla.trainer.config_io import ConfigError, load_config

    args = sys.argv[1:] if argv is None else argv
    try:
        cfg = load_config(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    elastic_agent = "TORCHELASTIC_RUN_ID" in os.environ
    if elastic_agent and cfg.resume == "never":
        print("config error: under torchrun, pass --resume=auto: the agent restarts workers after a failure or a "
              "membership change, and they must continue from the run's own checkpoints", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    from lavla.trainer.distributed import PortInUseError
    from lavla.trainer.loop import NonFiniteLossError, run

    try:
        summary = run(cfg)
    except NonFiniteLossError as e:  # a diagnosis, not a crash: no traceback
        print(f"training stopped: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except PortInUseError as e:  # nothing ran; the message says which flag fixes it
        print(f"cannot start: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    # A preemption checkpoint is "try again": the SLURM script requeues on it. Under torchrun the
    # agent restarts any worker that exits non-zero, so there the saved state exits cleanly (the
    # agent's own SIGTERM at a membership change, or the SLURM script's USR1, decides what follows).
    if summary.get("exit_reason") == "preempted" and not elastic_agent:
        return EXIT_PREEMPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
