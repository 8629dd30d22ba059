"""Dataset specs written in YAML: a mixture entry's ``spec:`` mapping becomes a :class:`DatasetSpec`.

A user's own dataset needs no Python: the entry carries its standardization facts inline, with the
same fields as ``DatasetSpec`` (``lavla-data inspect`` writes them), and mixes with registry
datasets in one plan::

    data:
      datasets:
        - {name: synthetic_world, path: ..., weight: 1.0}
        - name: my_robot
          path: /data/my_robot/1.0.0
          spec: {image_primary_key: steps/observation/image, action_keys: [steps/action], control_hz: 15}

Omitted fields keep ``DatasetSpec``'s defaults, except ``lam_stride``, which follows ``control_hz``
(``lam_stride_for``) unless given. An inline spec wins over a registry entry of the same name for
that entry. The spec is part of the source's fingerprint and statistics cache key (both hash
``spec.to_dict()``), so editing it invalidates both, as for registry specs.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from lavla.data_service.datasets.dataset_spec import DatasetSpec, lam_stride_for

__all__ = ["PROPRIO_LAYOUTS", "spec_for_entry", "spec_from_mapping", "spec_to_mapping"]

PROPRIO_LAYOUTS = ("pos_euler", "pos_quat", "joint", "none")
_FIELDS = {f.name: f for f in dataclasses.fields(DatasetSpec)}
_TUPLES = ("proprio_keys", "action_keys", "action_absolute_mask")


def _fail(where: str, message: str) -> ValueError:
    return ValueError(f"{where}: {message}")


def _check_type(where: str, key: str, value: Any) -> Any:
    """``value`` coerced to the field's type (YAML lists -> tuples, ints -> floats), or a clear error."""
    if key in _TUPLES:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise _fail(where, f"spec field {key!r} must be a list, got {value!r}")
        if key == "action_absolute_mask":
            if not all(isinstance(v, bool) for v in value):
                raise _fail(where, f"spec field {key!r} must be a list of true/false, got {value!r}")
        elif not all(isinstance(v, str) for v in value):
            raise _fail(where, f"spec field {key!r} must be a list of keys (strings), got {value!r}")
        return tuple(value)
    if key in ("image_primary_key", "image_wrist_key", "language_key"):
        if value is not None and not isinstance(value, str):
            raise _fail(where, f"spec field {key!r} must be a key (string) or null, got {value!r}")
        return value
    if key in ("bgr", "bgr_wrist", "is_video"):
        if not isinstance(value, bool):
            raise _fail(where, f"spec field {key!r} must be true or false, got {value!r}")
        return value
    if key == "control_hz":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise _fail(where, f"spec field 'control_hz' must be a positive number, got {value!r}")
        return float(value)
    if key in ("lam_stride", "embodiment_id", "drop_first_steps", "drop_last_steps"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _fail(where, f"spec field {key!r} must be a non-negative integer, got {value!r}")
        return value
    if not isinstance(value, str):
        raise _fail(where, f"spec field {key!r} must be a string, got {value!r}")
    return value


def spec_from_mapping(name: str, fields: Mapping[str, Any], *, where: str | None = None) -> DatasetSpec:
    """A validated :class:`DatasetSpec` named ``name`` from a YAML mapping of its fields.

    Errors name ``where`` (e.g. ``data.datasets[1] (my_robot)``), the field and what was expected;
    unknown fields list close matches, so a typo never silently falls back to a default."""
    from lavla.data_service.datasets.standardize import GRIPPER_CONVENTIONS, TRANSFORMS

    where = where or f"dataset {name!r}"
    if not isinstance(fields, Mapping):
        raise _fail(where, f"spec must be a mapping of DatasetSpec fields, got {type(fields).__name__}")
    unknown = [k for k in fields if k not in _FIELDS]
    if unknown:
        hints = {k: [f for f in _FIELDS if str(k) in f][:1] or difflib.get_close_matches(str(k), list(_FIELDS), n=1)
                 for k in unknown}
        said = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise _fail(where, f"unknown spec field(s) {said}; the fields are {sorted(k for k in _FIELDS if k != 'name')}")
    if "name" in fields and fields["name"] != name:
        raise _fail(where, f"spec name {fields['name']!r} differs from the entry's name {name!r} (omit it)")
    values = {k: _check_type(where, k, v) for k, v in fields.items() if k != "name"}
    if "lam_stride" not in values and "control_hz" in values:
        values["lam_stride"] = lam_stride_for(values["control_hz"])
    if values.get("gripper_convention", "open_1") not in GRIPPER_CONVENTIONS:
        raise _fail(where, f"spec gripper_convention {values['gripper_convention']!r} is not one of {sorted(GRIPPER_CONVENTIONS)}")
    if values.get("proprio_layout", "none") not in PROPRIO_LAYOUTS:
        raise _fail(where, f"spec proprio_layout {values['proprio_layout']!r} is not one of {list(PROPRIO_LAYOUTS)}")
    if values.get("transform", "default") not in TRANSFORMS:
        raise _fail(where, f"spec transform {values['transform']!r} is not one of {sorted(TRANSFORMS)}")
    if not values.get("is_video", False) and not values.get("image_primary_key"):
        raise _fail(where, "spec needs image_primary_key (the step key of the primary camera) for a robot dataset")
    values.setdefault("image_primary_key", None)
    try:
        return DatasetSpec(name=name, **values)
    except (TypeError, ValueError) as e:
        raise _fail(where, str(e)) from None


def spec_to_mapping(spec: DatasetSpec) -> dict[str, Any]:
    """The YAML mapping of ``spec`` (lists for tuples, without ``name``): ``spec_from_mapping``'s inverse."""
    out = {}
    for k, v in spec.to_dict().items():
        if k != "name":
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def spec_for_entry(entry: Any, index: int | None = None) -> DatasetSpec:
    """The spec of one mixture entry: its inline ``spec`` when it has one, else the registry's."""
    inline = getattr(entry, "spec", None)
    if inline:
        where = f"data.datasets[{index}] ({entry.name})" if index is not None else f"dataset {entry.name!r}"
        return spec_from_mapping(entry.name, inline, where=where)
    from lavla.data_service.datasets.registry import get_spec

    return get_spec(entry.name)
