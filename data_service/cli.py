"""``lavla-data``: bring your own data without writing Python.

    lavla-data inspect PATH                       # what PATH is, the inferred spec, what was assumed
    lavla-data inspect PATH --recipe baseline --out my_robot.yaml
    deepspeed launcher/pretrain.py --config my_robot.yaml

``inspect`` prints the ready-to-paste ``data.datasets`` entry (with its inline ``spec``) and the list
of what it could not infer; ``--recipe NAME --out FILE`` writes a complete config: the recipe's YAML
with the mixture replaced by this dataset and the synthetic generator off. Exit codes: 0 done, 2 bad
input (the message names the file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from lavla.data_service.errors import DataError

REPO = Path(__file__).resolve().parents[1]
ACTION_RECIPES_NEED_ACTIONS = ("baseline", "la_align", "la_direct", "la_cond", "la_tok", "lara", "lapa_action",
                               "quickstart")


def _recipe_path(recipe: str) -> Path:
    p = Path(recipe)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    q = REPO / "configs" / f"{recipe}.yaml"
    if q.is_file():
        return q
    known = sorted(x.stem for x in (REPO / "configs").glob("*.yaml"))
    raise DataError(f"unknown recipe {recipe!r}; known: {', '.join(known)}", file=q)


def recipe_config(recipe: str, entry: dict[str, Any], summary: dict[str, Any], name: str) -> tuple[dict[str, Any], list[str]]:
    """The recipe's YAML with the mixture replaced by ``entry``; returns (config, notes)."""
    path = _recipe_path(recipe)
    cfg = yaml.safe_load(path.read_text()) or {}
    notes = []
    data = cfg.setdefault("data", {})
    data["datasets"] = [entry]
    data.setdefault("synthetic", {})["enabled"] = False
    adim, pdim = int(summary.get("action_dim") or 0), int(summary.get("proprio_dim") or 0)
    need_a = 10 if entry.get("spec", {}).get("action_layout") == "eef_r6" else (7 if adim else 0)
    spec = _recipe_input_spec(path)
    _widen(cfg, spec.action_dim, "max_action_dim", need_a, notes)
    _widen(cfg, spec.proprio_dim, "max_proprio_dim", pdim, notes)
    cfg.setdefault("run", {})["dir"] = f"runs/{path.stem}_{name}"
    if entry.get("spec", {}).get("is_video") and path.stem in ACTION_RECIPES_NEED_ACTIONS:
        notes.append(f"{path.stem} trains on actions and this dataset has none: mix it with a robot dataset, or "
                     "use a latent recipe (lam_pretrain, lapa_latent)")
    return cfg, notes


def _recipe_input_spec(path: Path) -> Any:
    from lavla.trainer.config_io import load_config

    return load_config(["--config", str(path)]).model.input_spec()


def _widen(cfg: dict[str, Any], stated: tuple[tuple[str, int], ...], data_field: str, need: int, notes: list[str]) -> None:
    """Make the padded width ``data_field`` at least ``need``: where the recipe states it (its input
    spec's model fields), there, so the data side takes it from the model; otherwise on the data side."""
    if stated:
        for name, value in stated:
            if need > value:
                node = cfg.setdefault("model", {})
                *parents, leaf = name.split(".")
                for key in parents:
                    node = node.setdefault(key, {})
                node[leaf] = need
                notes.append(f"model.{name} raised to {need}")
        return
    from lavla.data_service.config import DataConfig

    data = cfg["data"]
    if need > int(data.get(data_field, DataConfig.__dataclass_fields__[data_field].default)):
        data[data_field] = need
        notes.append(f"data.{data_field} raised to {need}")


def cmd_inspect(a: argparse.Namespace) -> int:
    from lavla.data_service.datasets.inspect_dataset import inspect_path

    try:
        found = inspect_path(a.path, fps=a.fps, name=a.name, primary=a.primary, wrist=a.wrist)
    except (DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    entry = found.entry(split=a.split, weight=a.weight)
    print(f"# {found.path}: {found.kind}")
    for k, v in found.summary.items():
        print(f"#   {k}: {v}")
    if found.trainable:
        from lavla.data_service.datasets.inline_spec import spec_from_mapping

        try:  # what the trainer will do with it: validate now, not at launch
            spec_from_mapping(found.name, found.spec or {}, where=f"inferred spec of {found.path}")
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print("# the data.datasets entry:")
        print(yaml.safe_dump({"datasets": [entry]}, sort_keys=False, default_flow_style=None).rstrip())
    notes = list(found.notes)
    if a.recipe:
        if not found.trainable:
            print(f"error: {found.kind} cannot be trained on yet; no config written", file=sys.stderr)
            return 2
        try:
            cfg, more = recipe_config(a.recipe, entry, found.summary, found.name)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        notes += more
        out = Path(a.out or f"{found.name}_{Path(a.recipe).stem}.yaml")
        header = (f"# Written by lavla-data inspect {found.path} --recipe {a.recipe}: the recipe's config with\n"
                  f"# this dataset as the mixture. Check the assumptions listed when it was written.\n")
        out.write_text(header + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None))
        print(f"# wrote {out}: deepspeed launcher/pretrain.py --config {out}")
    if notes:
        print("# not inferred (defaults taken):")
        for n in notes:
            print(f"#   - {n}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lavla-data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inspect", help="recognize a dataset and infer its spec (and optionally a full config)")
    i.add_argument("path", help="TFDS/RLDS build dir, LeRobot root or folder of videos with annotations")
    i.add_argument("--name", default=None, help="dataset name in the mixture (default: the TFDS/folder name)")
    i.add_argument("--fps", type=float, default=None, help="control rate in Hz when the files do not record it")
    i.add_argument("--primary", default=None, help="step key of the primary camera (overrides the guess)")
    i.add_argument("--wrist", default=None, help="step key of the wrist camera ('' for none)")
    i.add_argument("--split", default="train", help="split expression of the entry (e.g. train[:95%%])")
    i.add_argument("--weight", type=float, default=1.0, help="mixture weight of the entry")
    i.add_argument("--recipe", default=None, help="write a full config from configs/RECIPE.yaml (or a YAML path)")
    i.add_argument("--out", default=None, help="where --recipe writes the config (default NAME_RECIPE.yaml)")
    a = p.parse_args(argv)
    return cmd_inspect(a)


if __name__ == "__main__":
    sys.exit(main())
