"""``python -m lavla.launcher.convert_checkpoint <run dir | checkpoint dir> [--workers N]``.

Converts a checkpoint to DeepSpeed's universal format (into ``<checkpoint>/universal/``) so it
can be resumed at another world size. Resuming does this automatically on rank 0; running it
ahead of time keeps the conversion off the job's clock. See ``trainer/universal.py``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from lavla.trainer.universal import main as convert_main

    return convert_main(argv)


if __name__ == "__main__":
    sys.exit(main())
