"""DeepSpeed hostfiles: MPI-style ``<host> slots=<n>`` lines, one per node.

DeepSpeed's runner takes its resource pool from the hostfile even with ``--no_ssh --node_rank``
or ``--launcher slurm`` (it never asks SLURM), so every multi-node launch needs one. The SLURM
batch script writes it in bash at run time (the batch host may have no Python of ours: e.g. a
pyxis container job); this module is the same format for everything else:

    python -m lavla.launcher.hostfile --hosts node1,node2 --slots 8 -o hostfile     # hand-made clusters
    python -m lavla.launcher.hostfile --from-slurm --slots 8 -o hostfile            # inside an allocation
    python -m lavla.launcher.hostfile --check hostfile                              # validate before launch
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

_LINE_RE = re.compile(r"^(?P<host>[^\s#]+)\s+slots=(?P<slots>\d+)\s*$")


class HostfileError(ValueError):
    """A hostfile or host list that DeepSpeed would reject or misread."""


def format_hostfile(hosts: Sequence[str], slots: int) -> str:
    """The hostfile text for ``hosts`` (in node-rank order), each with ``slots`` processes."""
    if slots < 1:
        raise HostfileError(f"slots must be >= 1 (processes per node), got {slots}")
    if not hosts:
        raise HostfileError("no hosts")
    seen: set[str] = set()
    for h in hosts:
        if not h or any(c.isspace() for c in h) or h.startswith("#"):
            raise HostfileError(f"invalid host name {h!r}")
        if h in seen:  # DeepSpeed keys its resource pool by host name: a duplicate would merge
            raise HostfileError(f"host {h!r} listed twice")
        seen.add(h)
    return "".join(f"{h} slots={slots}\n" for h in hosts)


def parse_hostfile(text: str, source: str = "hostfile") -> dict[str, int]:
    """``{host: slots}`` in file order; blank lines and ``#`` comments are skipped."""
    pool: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE_RE.match(line)
        if m is None:
            raise HostfileError(f"{source}:{lineno}: expected '<host> slots=<n>', got {raw!r}")
        host, slots = m.group("host"), int(m.group("slots"))
        if host in pool:
            raise HostfileError(f"{source}:{lineno}: host {host!r} listed twice")
        if slots < 1:
            raise HostfileError(f"{source}:{lineno}: slots must be >= 1")
        pool[host] = slots
    if not pool:
        raise HostfileError(f"{source}: no hosts")
    return pool


def slurm_hostnames(nodelist: str | None = None) -> list[str]:
    """Expand a SLURM node list (default ``$SLURM_JOB_NODELIST``) with ``scontrol show hostnames``."""
    nodelist = nodelist or os.environ.get("SLURM_JOB_NODELIST", "")
    if not nodelist:
        raise HostfileError("no node list: pass one or run inside a SLURM allocation (SLURM_JOB_NODELIST)")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise HostfileError("scontrol not found: --from-slurm needs the SLURM client tools") from e
    except subprocess.CalledProcessError as e:
        raise HostfileError(f"scontrol show hostnames {nodelist!r} failed: {e.stderr.strip()}") from e
    return [h for h in out.stdout.split() if h]


def write_hostfile(path: Path, hosts: Sequence[str], slots: int) -> None:
    """Write atomically: other nodes may read it while it is being rewritten by a requeued job."""
    text = format_hostfile(hosts, slots)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lavla.launcher.hostfile", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hosts", help="comma-separated host names, in node-rank order")
    src.add_argument("--from-slurm", nargs="?", const="", metavar="NODELIST",
                     help="expand NODELIST (default: $SLURM_JOB_NODELIST) with scontrol")
    src.add_argument("--check", metavar="HOSTFILE", help="validate an existing hostfile and print its pool")
    p.add_argument("--slots", type=int, default=0, help="processes (GPUs) per node")
    p.add_argument("-o", "--out", help="write here (default: stdout)")
    a = p.parse_args(argv)
    try:
        if a.check:
            pool = parse_hostfile(Path(a.check).read_text(), a.check)
            print(f"{len(pool)} node(s), {sum(pool.values())} process(es): " +
                  ", ".join(f"{h}x{s}" for h, s in pool.items()))
            return 0
        hosts = [h for h in a.hosts.split(",") if h] if a.hosts is not None else slurm_hostnames(a.from_slurm or None)
        if a.out:
            write_hostfile(Path(a.out), hosts, a.slots)
        else:
            sys.stdout.write(format_hostfile(hosts, a.slots))
    except (HostfileError, OSError) as e:
        print(f"hostfile error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
