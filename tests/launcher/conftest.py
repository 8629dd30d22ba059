"""Fixtures for the launcher tests: the fake SLURM tools and throwaway local Ray clusters."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from lavla.trainer.ports import free_port
from tests.conftest import read_jsonl, run_deepspeed

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FAKE_SLURM = HERE / "fake_slurm"
STUB_BIN = HERE / "stub_bin"


STEPS = 6
"""Optimizer steps of the end-to-end runs (all compare against one reference run)."""


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_world_args: list[str]) -> Path:
    """An uninterrupted 2-rank single-node run (plain `deepspeed --num_gpus 2`) with sample logs."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_deepspeed([*tiny_world_args, f"--run.dir={run_dir}", f"--trainer.max_steps={STEPS}",
                   "--data.log_sample_ids=true", "--checkpoint.every_steps=0"], num_ranks=2)
    return run_dir


@pytest.fixture(scope="session")
def elastic_reference(tmp_path_factory: pytest.TempPathFactory, tiny_world_args: list[str]) -> Path:
    """The uninterrupted 2-rank run the elastic tests compare with (36 steps, sample logs)."""
    run_dir = tmp_path_factory.mktemp("elastic_reference") / "run"
    run_deepspeed([*tiny_world_args, f"--run.dir={run_dir}", "--trainer.max_steps=36", "--data.log_sample_ids=true",
                   "--checkpoint.every_steps=0", "--optim.warmup_steps=0"], num_ranks=2)
    return run_dir


def samples(run_dir: Path, rank: int) -> list[tuple[int, list[int]]]:
    """(step, sample ids) of every micro batch rank ``rank`` trained on, in order."""
    return [(r["step"], r["sample_ids"]) for r in read_jsonl(run_dir / f"samples.rank{rank}.jsonl")]


def kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL a process and all its descendants, also those in sessions of their own (torchrun's
    trainers, Ray's workers): a lost machine. Returns how many processes were targeted."""
    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in victims:
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.wait(10)
    return len(victims)


def kill_matching(needle: str) -> list[int]:
    """SIGKILL processes whose command line mentions ``needle`` (a path unique to one test)."""
    killed = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.info["pid"] != os.getpid() and needle in " ".join(p.info["cmdline"] or []):
            try:
                p.kill()
                killed.append(p.info["pid"])
            except psutil.Error:
                pass
    return killed


@dataclass
class FakeSlurm:
    """A private fake SLURM: its state dir, nodes and the environment that puts it on PATH."""

    state: Path
    nodes: list[str]
    extra_path: list[Path] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        path = os.pathsep.join([str(FAKE_SLURM), *map(str, self.extra_path), os.environ["PATH"]])
        return {**os.environ, "PATH": path, "FAKE_SLURM_STATE": str(self.state),
                "FAKE_SLURM_NODES": ",".join(self.nodes), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
                "PYTHONPATH": str(REPO), **extra}

    def submit(self, launcher_args: list[str], env: dict[str, str]) -> str:
        """``python -m lavla.launcher.slurm ARGS`` (it calls our sbatch); returns the job id."""
        proc = subprocess.run([sys.executable, "-m", "lavla.launcher.slurm", *launcher_args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        line = next(x for x in proc.stdout.splitlines() if x.startswith("submitted job "))
        return line.split()[2].rstrip(":")

    def job(self, job_id: str) -> Path:
        return self.state / job_id

    def wait(self, job_id: str, timeout: float) -> dict:
        done = self.job(job_id) / "done"
        deadline = time.monotonic() + timeout
        while not done.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake SLURM job {job_id} still {self.state_of(job_id)} after {timeout}s")
            time.sleep(0.2)
        return json.loads(done.read_text())

    def state_of(self, job_id: str) -> str:
        return (self.job(job_id) / "state").read_text()

    def runs(self, job_id: str) -> list[dict]:
        path = self.job(job_id) / "runs"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def scancel_batch(self, job_id: str, sig: str, env: dict[str, str]) -> None:
        subprocess.run(["scancel", "--batch", f"--signal={sig}", job_id], env=env, check=True, timeout=30)

    def teardown(self) -> None:
        """Kill whatever a failed test left: controllers, batch shells and steps of our jobs."""
        if not self.state.is_dir():
            return
        for jd in self.state.iterdir():
            for name in ("controller.pid", "batch.pid"):
                pid_file = jd / name
                if pid_file.exists():
                    try:
                        os.killpg(int(pid_file.read_text()), signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            for line in (jd / "pgids").read_text().split() if (jd / "pgids").exists() else []:
                try:
                    os.killpg(int(line), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


@pytest.fixture
def fake_slurm(tmp_path: Path) -> Iterator[FakeSlurm]:
    fs = FakeSlurm(state=tmp_path / "fake-slurm", nodes=["localhost"])
    fs.state.mkdir()
    try:
        yield fs
    finally:
        fs.teardown()


@dataclass
class LocalRayCluster:
    """``ray start --head`` + ``ray start --address`` processes on this machine: a 2-"node" cluster.

    Every process is ours: started with ``--block`` in a new session, stopped by process group
    and then by its unique temp dir (never ``ray stop``, which would stop other people's Ray).
    """

    temp_dir: Path
    port: int
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def env() -> dict[str, str]:
        # One auth mode for every process: a head finding ~/.ray/auth_token would enable tokens.
        return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}

    def _start(self, args: list[str], log: str, cpus: int, resources: str = "") -> subprocess.Popen:
        common = ["--block", f"--num-cpus={cpus}", "--num-gpus=0", "--temp-dir", str(self.temp_dir),
                  *([f"--resources={resources}"] if resources else []),
                  "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
                  f"--object-store-memory={100 * 1024 * 1024}"]
        out = open(self.temp_dir / log, "w")
        proc = subprocess.Popen(["ray", "start", *args, *common], env=self.env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def add_node(self, cpus: int = 2, ip: str = "127.0.0.2", resources: str = "") -> subprocess.Popen:
        """One more worker "node" (its own raylet, on a loopback address of its own, so that no
        driver attaches to it and its loss takes only its workers)."""
        return self._start([f"--address={self.address}", f"--node-ip-address={ip}"],
                           f"node{len(self.procs)}.log", cpus, resources)

    def alive_nodes(self) -> int:
        probe = (f"import ray\nray.init(address='{self.address}', log_to_driver=False)\n"
                 "print(sum(n['Alive'] for n in ray.nodes()))\n")
        out = subprocess.run([sys.executable, "-c", probe], env=self.env(), check=True, timeout=120,
                             capture_output=True, text=True)
        return int(out.stdout.strip().splitlines()[-1])

    @staticmethod
    def kill_node(proc: subprocess.Popen) -> int:
        """SIGKILL a node started by ``add_node``: its raylet, object store and every worker it
        spawned, as when the machine is lost. Returns how many processes died."""
        return kill_tree(proc)

    def start(self, nodes: int = 2, cpus_per_node: int = 2, timeout: float = 120, head_ip: str = "",
              resources: str = "") -> None:
        """``head_ip``: the head's node address; 127.0.0.1 makes drivers that connect to
        ``self.address`` attach to the head (Ray Train puts its controller on the driver's node)."""
        ip = [f"--node-ip-address={head_ip}"] if head_ip else []
        self._start(["--head", f"--port={self.port}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
                     f"--ray-client-server-port={free_port()}", *ip], "head.log", cpus_per_node, resources)
        for i in range(1, nodes):
            self._start([f"--address={self.address}"], f"worker{i}.log", cpus_per_node)
        probe = ("import ray,sys,time\n"
                 f"ray.init(address='{self.address}', log_to_driver=False)\n"
                 f"deadline = time.monotonic() + {timeout}\n"
                 f"while sum(n['Alive'] for n in ray.nodes()) < {nodes}:\n"
                 "    assert time.monotonic() < deadline, ray.nodes()\n"
                 "    time.sleep(0.5)\n")
        subprocess.run([sys.executable, "-c", probe], env=self.env(), check=True, timeout=timeout + 30,
                       capture_output=True)

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5  # `ray start --block` drains for up to 30 s: do not wait for it
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        time.sleep(0.5)
        kill_matching(str(self.temp_dir))


@pytest.fixture
def ray_cluster() -> Iterator[LocalRayCluster]:
    pytest.importorskip("ray")
    # Ray's socket paths must stay short: a short private dir under /tmp, not pytest's tmp_path.
    temp = Path(tempfile.mkdtemp(prefix="lvray", dir="/tmp"))
    cluster = LocalRayCluster(temp_dir=temp, port=free_port())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp, ignore_errors=True)
