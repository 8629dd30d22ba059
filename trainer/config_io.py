"""Load, validate, override and save ``PretrainConfig``.

YAML recipes are decoded by draccus into the typed dataclasses; ``--section.field=value`` flags
override any field (the draccus convention of OpenVLA and LeRobot). On top of draccus this module
adds what users need at 3 a.m.: errors that name the bad key *and* the file it came from, with a
"did you mean" suggestion, instead of an argparse usage dump.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import re
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import draccus
import yaml
from draccus.utils import DecodingError, ParsingError

from lavla.trainer.config import PretrainConfig


class ConfigError(ValueError):
    """A config that cannot be loaded: unknown key, wrong type, invalid value or missing file."""


def _split_argv(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Pull ``--config PATH`` out of argv and drop the ``--local_rank`` that deepspeed appends."""
    config_path: str | None = None
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in ("--config", "--config_path"):
            config_path = next(it, None)
            if config_path is None:
                raise ConfigError("--config needs a path to a YAML recipe")
        elif arg.startswith(("--config=", "--config_path=")):
            config_path = arg.split("=", 1)[1]
        elif arg.startswith("--local_rank") or arg.startswith("--local-rank"):
            if "=" not in arg:
                next(it, None)  # value given as a separate token
        else:
            rest.append(arg)
    return config_path, rest


_BASE60 = re.compile(r"^--([\w.]+)=(\d+(?::\d+)+)$")


def _quote_colon_numbers(cli: list[str]) -> list[str]:
    """``--profile.steps=3:5`` -> ``--profile.steps='3:5'``: draccus reads values as YAML 1.1, in
    which ``3:5`` is the base-60 integer 185."""
    return [f"--{m.group(1)}='{m.group(2)}'" if (m := _BASE60.match(a)) else a for a in cli]


def _resolve_type(tp: Any) -> Any:
    """Strip Optional[...] so nested dataclasses are found behind ``X | None`` annotations."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _choice_class(base: type, chosen: str | None) -> type:
    names = list(base.get_known_choices())
    if chosen is None:
        return base
    if chosen not in names:
        raise ConfigError(f"unknown recipe type {chosen!r}; known: {', '.join(sorted(names))}")
    return base.get_choice_class(chosen)


def _valid_keys(cls: type, chosen_types: dict[str, str], prefix: str = "") -> list[str]:
    """All dotted field paths of ``cls``; choice fields expand to the chosen subclass's fields."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        keys.append(path)
        tp = _resolve_type(hints[f.name])
        if isinstance(tp, type) and issubclass(tp, draccus.ChoiceRegistry):
            keys.append(f"{path}.type")
            chosen = chosen_types.get(path)
            if chosen is None and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                chosen = tp.get_choice_name(type(f.default_factory()))  # type: ignore[misc]
            keys += _valid_keys(_choice_class(tp, chosen), chosen_types, prefix=f"{path}.")
        elif dataclasses.is_dataclass(tp):
            keys += _valid_keys(tp, chosen_types, prefix=f"{path}.")
    return keys


def _chosen_types(yaml_tree: dict[str, Any], cli: list[str]) -> dict[str, str]:
    """Recipe ``type`` selections from the YAML file and the command line (CLI wins)."""
    chosen: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            if "type" in node and isinstance(node["type"], str):
                chosen[prefix.rstrip(".")] = node["type"]
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")

    walk(yaml_tree, "")
    for arg in cli:
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            if key.endswith(".type"):
                chosen[key[: -len(".type")]] = value
    return chosen


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_yaml_keys(tree: Any, valid: set[str], valid_list: list[str], source: str, prefix: str = "") -> None:
    if not isinstance(tree, dict):
        return
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if path not in valid:
            raise ConfigError(f"{source}: unknown config key '{path}'{_suggest(path, valid_list)}")
        if isinstance(v, dict):
            _check_yaml_keys(v, valid, valid_list, source, prefix=f"{path}.")


def _check_cli_keys(cli: list[str], valid: set[str], valid_list: list[str]) -> None:
    for arg in cli:
        if arg in ("-h", "--help"):
            continue
        if not arg.startswith("--"):
            raise ConfigError(f"command line: unexpected argument {arg!r}; overrides look like --section.field=value")
        key = arg[2:].split("=", 1)[0]
        if key not in valid:
            raise ConfigError(f"command line: unknown config key '{key}'{_suggest(key, valid_list)}")


def _root_message(e: BaseException) -> str:
    """draccus wraps a field's own validation error ("Couldn't instantiate ..."); show the cause."""
    msgs = [str(e)]
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
        msgs.append(str(e))
    useful = [m for m in msgs if m and "Couldn't instantiate" not in m]
    return useful[0] if useful else msgs[0]


def load_config(argv: Sequence[str]) -> PretrainConfig:
    """Build the run config from ``--config FILE`` plus ``--a.b=value`` overrides.

    Raises ``ConfigError`` naming the key and the file (or the command line) on any problem.
    """
    config_path, cli = _split_argv(argv)
    tree: dict[str, Any] = {}
    source = "command line"
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {config_path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{config_path}: not valid YAML: {e}") from e
        if not isinstance(tree, dict):
            raise ConfigError(f"{config_path}: top level must be a mapping of sections, got {type(tree).__name__}")
        source = config_path
    valid_list = _valid_keys(PretrainConfig, _chosen_types(tree, cli))
    valid = set(valid_list)
    _check_yaml_keys(tree, valid, valid_list, source)
    _check_cli_keys(cli, valid, valid_list)

    cli_keys = {a[2:].split("=", 1)[0] for a in cli if a.startswith("--")}
    try:
        cfg = draccus.parse(PretrainConfig, config_path=config_path, args=_quote_colon_numbers(cli))
    except (DecodingError, ParsingError, ValueError, TypeError) as e:
        msg = _root_message(e)
        origin = "command line" if any(k in msg for k in cli_keys) else source
        raise ConfigError(f"{origin}: {msg}") from e
    stated = {k.split(".", 1)[1] for k in cli_keys if k.startswith("data.")} | set(tree.get("data") or {})
    take_data_shapes_from_model(cfg, stated)
    return cfg


DATA_SHAPES = {"image_size": "image_size", "action_horizon": "action_horizon", "action_dim": "max_action_dim",
               "proprio_dim": "max_proprio_dim"}
"""Input-spec field -> the data field it sets."""


def take_data_shapes_from_model(cfg: PretrainConfig, stated: set[str]) -> None:
    """The data side takes the batch shapes the recipe states (``model.input_spec()``) unless the config
    states them itself: a shape is written once, in the model. A data field stated in the YAML or on
    the command line is kept, and the model build checks it; model fields that disagree among
    themselves are left for that check to name."""
    spec = cfg.model.input_spec()
    for spec_field, data_field in DATA_SHAPES.items():
        values = {value for _, value in getattr(spec, spec_field)}
        if data_field not in stated and len(values) == 1:
            setattr(cfg.data, data_field, values.pop())


def dump_config(cfg: PretrainConfig) -> str:
    """The resolved config as YAML (loadable again with ``--config``)."""
    buf = io.StringIO()
    draccus.dump(cfg, buf)
    return buf.getvalue()


