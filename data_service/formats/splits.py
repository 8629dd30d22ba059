"""TFDS split expressions (``train``, ``train[:95%]``, ``train[10:20]``, ``train[2shard:]``,
``train+val``, ``all``) resolved to absolute episode ranges, with TFDS's semantics.

Percent boundaries use TFDS's default ``closest`` rounding: ``round(p * n / 100)`` with Python's
``round`` (half to even) on a float, e.g. 12.5% of 20 -> 2 (not 3), 95% of 30 -> 28 (28.5 -> 28).
Slices then follow Python semantics on the split's episode list (negative indices count from the
end; a boundary beyond the split size is an error, as in TFDS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SUB = re.compile(r"^(?P<name>[\w-]+)(\[(?P<sel>[\d\w%:.-]+)\])?$")
_BOUND = re.compile(r"^((?P<val>-?[\d_.]+)(?P<unit>%|shard)?)?$")
_PLUS = re.compile(r"\s*\+\s*")


@dataclass(frozen=True)
class SplitRange:
    """Episodes ``start..stop-1`` of one split (absolute, in file order)."""

    split: str
    """Split name."""
    start: int
    """First episode index (inclusive)."""
    stop: int
    """End episode index (exclusive); ``stop <= start`` means empty."""

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _pct(boundary: float, n: int) -> int:
    return int(round(boundary * n / 100.0))


def _parse_bound(text: str, expr: str) -> tuple[float | int | None, str | None]:
    m = _BOUND.match(text)
    if m is None:
        raise ValueError(f"unrecognized split format {expr!r} (see https://www.tensorflow.org/datasets/splits)")
    if m.group("val") is None:
        return None, None
    unit = m.group("unit")
    return (float(m.group("val")) if unit == "%" else int(m.group("val"))), unit


def resolve_split(expr: str, shard_lengths: dict[str, list[int] | tuple[int, ...]]) -> list[SplitRange]:
    """Absolute ranges for a split expression, given each split's shard lengths (split order = dict order)."""
    out: list[SplitRange] = []
    for sub in _PLUS.split(str(expr).strip()):
        m = _SUB.match(sub)
        if m is None:
            raise ValueError(f"unrecognized split format {sub!r} in {expr!r} (see https://www.tensorflow.org/datasets/splits)")
        name, sel = m.group("name"), m.group("sel")
        if name == "all":
            if sel:
                raise ValueError(f"'all' does not support slicing ({expr!r})")
            out.extend(resolve_split(name2, shard_lengths)[0] for name2 in shard_lengths)
            continue
        if name not in shard_lengths:
            raise ValueError(f"unknown split {name!r} in {expr!r}; available: {list(shard_lengths)}")
        lengths = list(shard_lengths[name])
        n = sum(lengths)
        if sel is None:
            out.append(SplitRange(name, 0, n))
            continue
        parts = sel.split(":")
        if len(parts) == 1:  # train[3shard]: a single shard
            val, unit = _parse_bound(parts[0], expr)
            if unit != "shard" or val is None:
                raise ValueError(f"{expr!r}: single-index selection needs a shard unit, e.g. train[3shard]")
            lo, hi, unit = val, int(val) + 1, "shard"
        elif len(parts) == 2:
            (lo, u1), (hi, u2) = _parse_bound(parts[0], expr), _parse_bound(parts[1], expr)
            if lo is None and hi is None:
                raise ValueError(f"unrecognized split format {sub!r}")
            unit = u1 or u2
            # The unit of one bound applies to both (TFDS: `train[10%:20]` is 10%..20%).
            lo = None if lo is None else (float(lo) if unit == "%" else int(lo))
            hi = None if hi is None else (float(hi) if unit == "%" else int(hi))
        else:
            raise ValueError(f"unrecognized split format {sub!r}")
        if unit == "%":
            if abs(lo or 0) > 100 or abs(hi or 0) > 100:
                raise ValueError(f"{expr!r}: percent boundaries must be in [-100, 100]")
            start = 0 if lo is None else _pct(lo, n)
            stop = n if hi is None else _pct(hi, n)
        elif unit == "shard":
            start = 0 if lo is None else sum(lengths[: int(lo)])
            hi_i = None if hi is None else (len(lengths) + int(hi) if int(hi) <= 0 else int(hi))
            stop = n if hi_i is None else sum(lengths[:hi_i])
        else:
            start = 0 if lo is None else int(lo)
            stop = n if hi is None else int(hi)
        if abs(start) > n or abs(stop) > n:
            raise ValueError(f"{expr!r}: slice [{start}:{stop}] is out of range for {n} episodes")
        start = n + start if start < 0 else start
        stop = n + stop if stop < 0 else stop
        out.append(SplitRange(name, start, stop))
    return out
