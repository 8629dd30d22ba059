"""Write (and submit) the SLURM batch script of a pretraining run.

    python -m lavla.launcher.slurm --config configs/<recipe>.yaml --nodes 4 --gpus-per-node 8 \\
        [--partition P] [--account A] [--time 2-00:00:00] [--run-dir D] [--dry-run] [-- --a.b=v ...]

The script (``<run dir>/slurm/job.sbatch``, rendered from ``launcher/templates/``) builds a
DeepSpeed hostfile from the allocation, starts one ``deepspeed --no_ssh --node_rank i`` per
node with ``srun`` (rendezvous on the first node), starts the Ray data service on the
allocation when ``data.num_workers > 0``, forwards preemption signals to the trainers and
requeues the job after a preemption checkpoint. Every start uses ``--resume=auto``. The
protocol is described at the top of the generated script.

``--min-nodes K`` makes the job elastic: SLURM may start it on K to ``--nodes`` nodes, a failed
node does not end it (``--no-kill``), and one torchrun agent per node (``--nnodes=K:N``, c10d
rendezvous on the first node) restarts the trainers at the new world size from the newest
checkpoint; agents started in another allocation can join it (the job log prints the command).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lavla.launcher.exit_codes import EXIT_PREEMPTED

_ROOT = Path(__file__).resolve().parents[1]

TEMPLATES = Path(__file__).resolve().parent / "templates"
SCRIPT_NAME = "job.sbatch"
CONTAINER_WORKDIR = "/workspace/latent-vla"
"""Where the Dockerfile puts the code (its WORKDIR)."""
RESIGNAL_SECONDS = 30
"""How often a preemption signal is repeated until the trainers have exited."""
ELASTIC_AGENT_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
"""Environment of elastic torchrun agents. With the rendezvous TCP store shared (torch's default),
an agent that stays rank 0 across rounds does not publish the new round's master address, and
agents that join later wait for it until they time out (torch 2.13): every round must publish it."""
_TIME_RE = re.compile(r"^(\d+-)?\d{1,3}:\d{2}:\d{2}$|^\d+$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.,:@+/=-]+$")


class SlurmLaunchError(ValueError):
    """Options that cannot make a valid job; the message says which and why."""


@dataclass(frozen=True)
class SlurmJob:
    """Everything the batch script is rendered from (paths already resolved)."""

    config: str
    """``--config`` as the trainer sees it (relative to the work dir when inside the repo)."""
    overrides: tuple[str, ...]
    """Extra ``--section.field=value`` flags for the trainer."""
    run_dir: Path
    """Absolute run directory (checkpoints, logs, the script, hostfiles)."""
    nodes: int
    gpus_per_node: int
    cpus_per_task: int
    grace_seconds: int
    job_name: str
    partition: str = ""
    account: str = ""
    time: str = ""
    master_port: int = 0
    """0: derived from the job id at run time."""
    ray_cpus_per_node: int = 0
    """0: no Ray data service (``data.num_workers == 0``)."""
    ray_port: int = 0
    """0: derived from the job id at run time."""
    ray_start_args: tuple[str, ...] = ()
    container_image: str = ""
    container_mounts: str = ""
    sbatch_args: tuple[str, ...] = ()
    command: str = ""
    """The command line that generated the script (recorded in it)."""
    min_nodes: int = 0
    """0: a fixed-size job (DeepSpeed launchers). Else the elastic job's minimum node count (torchrun agents)."""
    max_restarts: int = 10
    """Elastic jobs: trainer restarts each torchrun agent allows after failures (membership changes are free)."""

    @property
    def elastic(self) -> bool:
        return self.min_nodes > 0

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "slurm"

    @property
    def script_path(self) -> Path:
        return self.log_dir / SCRIPT_NAME


def _fill(template: str, values: dict[str, str]) -> str:
    """Replace ``{{name}}`` in one pass (values are never re-scanned); every name must have a value."""
    missing = set(re.findall(r"\{\{(\w+)\}\}", template)) - set(values)
    if missing:
        raise RuntimeError(f"template placeholders without a value: {sorted(missing)}")
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)


def _port_expr(port: int, base: int) -> str:
    return str(port) if port else f"$(( {base} + SLURM_JOB_ID % 10000 ))"


def render(job: SlurmJob, repo_root: Path = _ROOT) -> str:
    """The batch script of ``job`` (pure: no file system access besides the templates)."""
    q = shlex.quote
    directives = [f"--partition={job.partition}" if job.partition else "",
                  f"--account={job.account}" if job.account else "",
                  f"--time={job.time}" if job.time else "", "--no-kill" if job.elastic else "", *job.sbatch_args]
    extra = "".join(f"#SBATCH {d}\n" for d in directives if d)
    container = []
    if job.container_image:
        container = [f"--container-image={job.container_image}", f"--container-workdir={CONTAINER_WORKDIR}"]
        if job.container_mounts:
            container.append(f"--container-mounts={job.container_mounts}")
    train_args = ["launcher/pretrain.py", "--config", job.config, "--resume=auto", f"--run.dir={job.run_dir}",
                  *job.overrides]
    if job.elastic and not any(o.startswith("--trainer.batch_layout=") for o in job.overrides):
        train_args.append("--trainer.batch_layout=nearest")  # the world size is not chosen in advance
    launch = _fill((TEMPLATES / ("launch_torchrun.sh" if job.elastic else "launch_deepspeed.sh")).read_text(), {
        "train_args": "\n".join(f"    {q(a)}" for a in train_args),
        "nodes": str(job.nodes),
        "max_restarts": str(job.max_restarts),
        "agent_env": " ".join(f"{k}={v}" for k, v in ELASTIC_AGENT_ENV.items()),
    })
    ray = ""
    if job.ray_cpus_per_node:
        ray = _fill((TEMPLATES / "ray_cluster.sh").read_text(), {
            "ray_port": _port_expr(job.ray_port, 30000),
            "ray_cpus_per_node": str(job.ray_cpus_per_node),
            "ray_start_args": "".join(" " + q(a) for a in job.ray_start_args),
        })
    cd_line = ("# Code and configs come from the container image (--container-workdir).\n"
               if job.container_image else f"cd {q(str(repo_root))} || exit 1\n")
    return _fill((TEMPLATES / "sbatch.sh").read_text(), {
        "job_name": job.job_name,
        "nodes": str(job.nodes),
        "nodes_directive": f"{job.min_nodes}-{job.nodes}" if job.elastic else str(job.nodes),
        "min_nodes": str(job.min_nodes or job.nodes),
        "gpus_per_node": str(job.gpus_per_node),
        "cpus_per_task": str(job.cpus_per_task),
        "grace_seconds": str(job.grace_seconds),
        "log_dir": str(job.log_dir),  # no quoting: also an #SBATCH value (build_job refuses whitespace)
        "extra_directives": extra,
        "command": job.command.replace("\n", " "),  # a comment line must stay one line
        "script_path": str(job.script_path),
        "exit_preempted": str(EXIT_PREEMPTED),
        "run_dir": q(str(job.run_dir)),
        "resignal_seconds": str(RESIGNAL_SECONDS),
        "cd_line": cd_line.rstrip("\n"),
        "master_port": _port_expr(job.master_port, 20000),
        "container_args": " ".join(q(a) for a in container),
        "ray_section": ray,
        "launch_section": launch,
    })


# --- building a job from the command line ------------------------------------------------------
def _check_token(name: str, value: str) -> str:
    # These land in #SBATCH lines: whitespace or a newline would smuggle in other directives.
    if value and not _TOKEN_RE.match(value):
        raise SlurmLaunchError(f"--{name} {value!r}: only letters, digits and _.,:@+/=- are allowed")
    return value


def _trainer_config_path(config: str, workdir: Path) -> str:
    path = Path(config).resolve()
    if not path.is_file():
        raise SlurmLaunchError(f"--config {config}: file not found")
    try:
        return str(path.relative_to(workdir))
    except ValueError:
        return str(path)  # outside the repo: must be visible at this path on the nodes (and in the container)


def _check_overrides(overrides: Sequence[str]) -> None:
    for arg in overrides:
        if arg == "--resume" or arg.startswith("--resume="):
            raise SlurmLaunchError(
                f"{arg}: a SLURM job always starts with --resume=auto (a requeued job must continue from its "
                "own checkpoints); to start from another checkpoint, run once by hand or choose a new --run-dir")
        if arg.startswith("--config"):
            raise SlurmLaunchError(f"{arg}: pass the recipe with this command's --config, before '--'")


def build_job(a: argparse.Namespace, overrides: Sequence[str], command: str, repo_root: Path = _ROOT) -> SlurmJob:
    """Validate the options and the training config (so mistakes fail here, not in the queue)."""
    from lavla.trainer.config_io import ConfigError, load_config

    if a.nodes < 1:
        raise SlurmLaunchError(f"--nodes must be >= 1, got {a.nodes}")
    if a.min_nodes and not 1 <= a.min_nodes < a.nodes:
        raise SlurmLaunchError(f"--min-nodes {a.min_nodes}: an elastic job needs 1 <= --min-nodes < --nodes ({a.nodes})")
    if a.max_restarts < 0:
        raise SlurmLaunchError(f"--max-restarts must be >= 0, got {a.max_restarts}")
    if a.gpus_per_node < 1:
        raise SlurmLaunchError(f"--gpus-per-node must be >= 1 (it is also the number of ranks per node), got {a.gpus_per_node}")
    if not 1 <= a.grace_seconds <= 65535:  # SLURM's limit for --signal=...@time
        raise SlurmLaunchError(f"--grace-seconds must be in 1..65535, got {a.grace_seconds}")
    if a.time and not _TIME_RE.match(a.time):
        raise SlurmLaunchError(f"--time {a.time!r}: expected minutes, HH:MM:SS or D-HH:MM:SS")
    for port_name in ("master_port", "ray_port"):
        port = getattr(a, port_name)
        if port and not 1024 <= port <= 65535:
            raise SlurmLaunchError(f"--{port_name.replace('_', '-')} must be in 1024..65535, got {port}")
    for extra in a.sbatch_arg:
        if not extra.startswith("-") or "\n" in extra:
            raise SlurmLaunchError(f"--sbatch-arg {extra!r}: expected one sbatch option such as --qos=high")
    _check_overrides(overrides)

    config = _trainer_config_path(a.config, repo_root)
    trainer_args = ["--config", a.config, *overrides]
    if a.run_dir:  # this option is a path of the submitting shell
        trainer_args.append(f"--run.dir={Path(a.run_dir).resolve()}")
    try:
        cfg = load_config(trainer_args)
    except ConfigError as e:
        raise SlurmLaunchError(f"config error: {e}") from e
    if a.container_image and not os.path.isabs(cfg.run.dir):
        raise SlurmLaunchError(f"run.dir {cfg.run.dir!r} would be inside the container: pass --run-dir on shared "
                               "storage and mount it with --container-mounts")
    # A relative run.dir of the recipe is relative to the repo, where the script runs the trainer.
    run_dir = Path(os.path.normpath(repo_root / cfg.run.dir))
    if not _TOKEN_RE.match(str(run_dir)):  # it appears unquoted in #SBATCH --output=
        raise SlurmLaunchError(f"run dir {str(run_dir)!r}: #SBATCH paths allow only letters, digits and _.,:@+/=-")
    overrides = [o for o in overrides if not o.startswith("--run.dir=")]

    ray_cpus = 0
    if cfg.data.num_workers > 0:
        ray_cpus = a.ray_cpus_per_node or math.ceil(cfg.data.num_workers * cfg.data.worker_cpus / a.nodes)
    return SlurmJob(
        config=config, overrides=tuple(overrides), run_dir=run_dir, nodes=a.nodes, gpus_per_node=a.gpus_per_node,
        cpus_per_task=a.cpus_per_task or 8 * a.gpus_per_node, grace_seconds=a.grace_seconds,
        job_name=_check_token("job-name", a.job_name or "lavla-" + re.sub(r"[^A-Za-z0-9_.-]", "_", run_dir.name)),
        partition=_check_token("partition", a.partition or ""), account=_check_token("account", a.account or ""),
        time=a.time or "", master_port=a.master_port or 0, ray_cpus_per_node=ray_cpus, ray_port=a.ray_port or 0,
        ray_start_args=tuple(shlex.split(a.ray_start_args or "")),
        container_image=_check_token("container-image", a.container_image or ""),
        container_mounts=_check_token("container-mounts", a.container_mounts or ""),
        sbatch_args=tuple(a.sbatch_arg), command=command, min_nodes=a.min_nodes, max_restarts=a.max_restarts,
    )


def write_script(job: SlurmJob, repo_root: Path = _ROOT) -> Path:
    job.log_dir.mkdir(parents=True, exist_ok=True)  # sbatch does not create the --output directory
    path = job.script_path
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(job, repo_root))
    tmp.chmod(0o755)
    os.replace(tmp, path)
    return path


def submit(script: Path) -> str:
    """``sbatch --parsable SCRIPT``; returns the job id."""
    if shutil.which("sbatch") is None:
        raise SlurmLaunchError(f"sbatch not found on PATH; the script is at {script} (use --dry-run to only write it)")
    proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SlurmLaunchError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lavla.launcher.slurm",
        description="Write the SLURM batch script of a pretraining run into <run dir>/slurm/ and submit it. "
                    "Trainer overrides go after '--'.",
        epilog="example: python -m lavla.launcher.slurm --config configs/quickstart.yaml --nodes 2 --gpus-per-node 8 "
               "--partition gpu --time 24:00:00 -- --trainer.max_steps=10000",
    )
    p.add_argument("--config", required=True, help="YAML recipe (validated now, read again by every start)")
    p.add_argument("--nodes", type=int, required=True, help="nodes to allocate (the maximum of an elastic job)")
    p.add_argument("--min-nodes", type=int, default=0,
                   help="make the job elastic: start on and keep going with as few as this many nodes (torchrun "
                        "agents, c10d rendezvous); the global batch is kept, micro batch and accumulation adapt")
    p.add_argument("--max-restarts", type=int, default=10,
                   help="elastic jobs: trainer restarts per agent after failures (default 10)")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs per node = training ranks per node")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--account", help="SLURM account to charge")
    p.add_argument("--time", help="time limit: minutes, HH:MM:SS or D-HH:MM:SS")
    p.add_argument("--run-dir", help="run directory (default: run.dir of the config); the script goes to <run-dir>/slurm/")
    p.add_argument("--grace-seconds", type=int, default=300,
                   help="USR1 this many seconds before the time limit: must cover finishing a step and saving (default 300)")
    p.add_argument("--job-name", help="default: lavla-<run dir name>")
    p.add_argument("--cpus-per-task", type=int, default=0, help="CPUs per node task (default: 8 per GPU)")
    p.add_argument("--master-port", type=int, default=0, help="rendezvous port (default: 20000 + job id %% 10000)")
    p.add_argument("--ray-port", type=int, default=0, help="Ray head port when data.num_workers > 0 (default: 30000 + job id %% 10000)")
    p.add_argument("--ray-cpus-per-node", type=int, default=0,
                   help="CPUs each node gives the Ray data service (default: ceil(num_workers x worker_cpus / nodes))")
    p.add_argument("--ray-start-args", default="", help="extra arguments for every `ray start`, one string")
    p.add_argument("--container-image", help="run every step in this image with pyxis (srun --container-image)")
    p.add_argument("--container-mounts", help="pyxis mounts, e.g. /scratch:/scratch (the run dir must be visible)")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="OPTION",
                   help="extra #SBATCH option, e.g. --qos=high or --exclusive (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="write the script, do not submit it")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    a = parser().parse_args(ours)
    command = shlex.join(["python", "-m", "lavla.launcher.slurm", *argv])
    try:
        job = build_job(a, overrides, command)
        script = write_script(job)
        if a.dry_run:
            print(f"wrote {script}\nsubmit with: sbatch {script}")
            return 0
        job_id = submit(script)
    except SlurmLaunchError as e:
        print(f"slurm launch error: {e}", file=sys.stderr)
        return 2
    print(f"submitted job {job_id}: {script}\nlog: {job.log_dir}/{job.job_name}-{job_id}.out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
