"""Hostfile format: ours round-trips, DeepSpeed's own parser reads it, and bad input is named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lavla.launcher.hostfile import HostfileError, format_hostfile, main, parse_hostfile, write_hostfile

from .conftest import FAKE_SLURM, REPO


def test_round_trip_and_deepspeed_reads_it(tmp_path: Path) -> None:
    text = format_hostfile(["node-a", "node-b"], 8)
    assert text == "node-a slots=8\nnode-b slots=8\n"
    assert parse_hostfile(text) == {"node-a": 8, "node-b": 8}
    path = tmp_path / "hostfile"
    write_hostfile(path, ["127.0.0.1", "127.0.0.2"], 2)
    from deepspeed.launcher.runner import fetch_hostfile

    assert dict(fetch_hostfile(str(path))) == {"127.0.0.1": 2, "127.0.0.2": 2}


@pytest.mark.parametrize(("hosts", "slots", "msg"), [
    (["a", "a"], 8, "listed twice"), ([], 8, "no hosts"), (["a b"], 8, "invalid host"), (["a"], 0, "slots"),
])
def test_format_rejects(hosts: list[str], slots: int, msg: str) -> None:
    with pytest.raises(HostfileError, match=msg):
        format_hostfile(hosts, slots)


def test_parse_names_the_line() -> None:
    assert parse_hostfile("# cluster\nn1 slots=4  # gpu\n\nn2 slots=4\n") == {"n1": 4, "n2": 4}
    with pytest.raises(HostfileError, match=r"hf:2: expected"):
        parse_hostfile("n1 slots=4\nn2 slot=4\n", "hf")
    with pytest.raises(HostfileError, match=r"hf:2: host 'n1' listed twice"):
        parse_hostfile("n1 slots=4\nn1 slots=4\n", "hf")


def test_cli_from_slurm_and_check(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    env = {**os.environ, "PATH": f"{FAKE_SLURM}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu01,gpu02",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "lavla.launcher.hostfile", "--from-slurm", "--slots", "8", "-o", str(out)],
                          env=env, cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "gpu01 slots=8\ngpu02 slots=8\n"
    assert main(["--check", str(out)]) == 0
    out.write_text("gpu01\n")
    assert main(["--check", str(out)]) == 2
    assert main(["--hosts", "a,a", "--slots", "1"]) == 2
