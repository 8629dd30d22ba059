"""``python -m lavla.launcher.export_policy <run dir | checkpoint dir> --out DIR [--tag TAG]``.

Writes a self-contained policy directory (``model.safetensors``, ``config.yaml``,
``normalization_stats.json``, ``export.json`` and backbone assets) that
``model.policy_io.load_policy(DIR)`` loads without DeepSpeed. A run directory exports its newest
complete checkpoint; an incomplete checkpoint is refused. See ``trainer/export.py``.
Prints ``export.json`` on stdout; exit code 0 on success, 2 on a bad source or output.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lavla.launcher.export_policy",
        description="Export a trained policy from a DeepSpeed checkpoint to a directory that "
        "lavla.model.policy_io.load_policy loads without DeepSpeed.")
    parser.add_argument("source", help="a run directory (its newest complete checkpoint) or a checkpoints/step_* directory")
    parser.add_argument("--out", required=True, help="export directory to create (written atomically)")
    parser.add_argument("--tag", default=None, help="checkpoint tag under <run>/checkpoints, e.g. step_00000300")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip loading the export back before publishing it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    from lavla.trainer.export import ExportError, export_policy

    try:
        meta = export_policy(args.source, args.out, tag=args.tag, overwrite=args.overwrite, verify=args.verify)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
