"""Run pretraining on an existing Ray cluster with Ray Train (one Ray actor per rank).

    python -m lavla.launcher.ray_job --config configs/<recipe>.yaml --address <head>:6379 \\
        [--num-workers 16] [--gpus-per-worker 1] [--max-failures 3] [-- --a.b=v ...]

Each worker runs the same entry as ``deepspeed launcher/pretrain.py``: the config is loaded by
``trainer.config_io.load_config`` and trained by ``trainer.loop.run``. Ray Train's TorchTrainer
creates the process group and sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT,
which DeepSpeed then uses as is. The data service's decoders are Ray actors on the same cluster.

Failures: when a worker dies (process crash, node loss), Ray Train tears the worker group down
and starts a new one, up to ``--max-failures`` times; every attempt runs with ``--resume=auto``
and so continues from the newest complete checkpoint in ``run.dir``. The run dir must therefore
be on storage that every node sees (as for SLURM). Preemption signals are not used here: the
training loop runs in a worker thread, where Python cannot install signal handlers.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from lavla.launcher.exit_codes import EXIT_CONFIG_ERROR, EXIT_NONFINITE

PASSTHROUGH_ENV_PREFIXES = ("LAVLA_", "WANDB_", "NCCL_", "HF_", "TORCH_", "PYTORCH_", "CUDA_LAUNCH_BLOCKING")
"""Driver environment variables the workers get too (Ray actors inherit the raylet's environment,
not the driver's)."""
_SECRET_RE = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)
"""Never copied: a job's runtime env is readable by everyone with access to the Ray dashboard;
secrets belong in the nodes' environment."""


class RayJobError(ValueError):
    """Options or a cluster that cannot run the job; the message says why."""


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: exactly what ``launcher/pretrain.py`` does for one rank."""
    import ray.train

    # Relative paths of the recipe (data, caches) mean what they mean for the driver.
    if os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])
    from lavla.trainer.config_io import load_config
    from lavla.trainer.loop import NonFiniteLossError, run

    try:
        summary = run(load_config(config["argv"]))
    except NonFiniteLossError as e:  # every rank raises it; a retry would resume into the same NaNs
        ray.train.report({"step": -1, "exit_reason": "nonfinite", "error": str(e)})
        return
    ray.train.report({"step": summary["step"], "exit_reason": summary["exit_reason"]})


def trainer_argv(config: str, overrides: Sequence[str], run_dir: Path, ray_address: str) -> list[str]:
    """The trainer's command line: the user's, plus what running under Ray Train requires."""
    for arg in overrides:
        if arg == "--resume" or arg.startswith("--resume="):
            raise RayJobError(f"{arg}: Ray jobs always run with --resume=auto (a restarted attempt must continue "
                              "from the run's own checkpoints)")
    return [
        "--config", str(Path(config).resolve()), *overrides,
        "--resume=auto",
        f"--run.dir={run_dir}",  # absolute: the workers' working directory is not the driver's
        f"--data.ray_address={ray_address}",  # recorded in the resolved config; workers reuse their connection
        "--checkpoint.save_on_signal=false",  # signal handlers need the main thread; Ray Train uses another
    ]


def _check_resources(ray: Any, workers: int, cpus: float, gpus: int, data_cpus: float) -> None:
    total = ray.cluster_resources()
    need = {"CPU": workers * cpus + data_cpus, "GPU": float(workers * gpus)}
    short = {k: (v, total.get(k, 0.0)) for k, v in need.items() if v > total.get(k, 0.0)}
    if short:
        detail = ", ".join(f"{k}: need {v:g}, cluster has {have:g}" for k, (v, have) in short.items())
        raise RayJobError(f"the cluster is too small ({detail}; {workers} trainer worker(s) x {cpus:g} CPU "
                          f"x {gpus} GPU plus {data_cpus:g} CPU for the data service). Add nodes, lower "
                          "--num-workers / --data.num_workers, or pass --wait-for-resources on an autoscaling cluster.")


def runtime_env() -> dict[str, Any]:
    from lavla.data_service.ray_cluster import worker_runtime_env

    env = worker_runtime_env()
    env.setdefault("env_vars", {}).update({k: v for k, v in os.environ.items()
                            if k.startswith(PASSTHROUGH_ENV_PREFIXES) and not _SECRET_RE.search(k)})
    return env


def run_job(a: argparse.Namespace, overrides: Sequence[str]) -> int:
    from lavla.trainer.config_io import ConfigError, load_config

    if a.num_workers < 1:
        raise RayJobError(f"--num-workers must be >= 1, got {a.num_workers}")
    if a.gpus_per_worker not in (0, 1):
        raise RayJobError(f"--gpus-per-worker must be 0 (CPU) or 1: DeepSpeed runs one rank per GPU, so use "
                          f"--num-workers=<GPUs> instead of {a.gpus_per_worker} GPUs per worker")
    try:  # validate before touching the cluster, with the run dir resolved against this shell
        cfg = load_config(["--config", a.config, *overrides])
    except ConfigError as e:
        raise RayJobError(f"config error: {e}") from e
    run_dir = Path(cfg.run.dir).resolve()

    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.init(address=a.address, runtime_env=runtime_env(), log_to_driver=True)
    try:
        address = ray.get_runtime_context().gcs_address
        argv = trainer_argv(a.config, overrides, run_dir, address)
        load_config(argv)  # the workers' exact command line is valid too
        if not a.wait_for_resources:
            data_cpus = cfg.data.num_workers * cfg.data.worker_cpus
            _check_resources(ray, a.num_workers, a.cpus_per_worker, a.gpus_per_worker, data_cpus)
        resources = {"CPU": a.cpus_per_worker, **({"GPU": 1} if a.gpus_per_worker else {})}
        # By reference (module + name), also when this file runs as __main__: workers import it.
        from lavla.launcher.ray_job import train_worker as entry

        trainer = TorchTrainer(
            entry,
            train_loop_config={"argv": argv, "cwd": os.getcwd()},
            torch_config=TorchConfig(backend="nccl" if a.gpus_per_worker else "gloo"),
            scaling_config=ScalingConfig(num_workers=a.num_workers, use_gpu=bool(a.gpus_per_worker),
                                         resources_per_worker=resources),
            run_config=RunConfig(name=a.name or f"lavla-{run_dir.name}",
                                 storage_path=a.storage_path or str(run_dir / "ray_train"),
                                 failure_config=FailureConfig(max_failures=a.max_failures)),
        )
        print(f"[ray_job] {a.num_workers} worker(s) on {address}, run dir {run_dir}, "
              f"max failures {a.max_failures}: {shlex.join(argv)}", flush=True)
        result = trainer.fit()
    finally:
        ray.shutdown()
    if result.error is not None:
        print(f"[ray_job] training failed: {result.error}", file=sys.stderr)
        return 1
    if (result.metrics or {}).get("exit_reason") == "nonfinite":
        print(f"[ray_job] training stopped: {result.metrics['error']}", file=sys.stderr)
        return EXIT_NONFINITE
    print(f"[ray_job] done: {result.metrics}", flush=True)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lavla.launcher.ray_job",
        description="Train on an existing Ray cluster (Ray Train TorchTrainer, one worker per rank). "
                    "Trainer overrides go after '--'.",
        epilog="example: python -m lavla.launcher.ray_job --config configs/quickstart.yaml --address head:6379 "
               "--num-workers 16 -- --data.num_workers=32",
    )
    p.add_argument("--config", required=True, help="YAML recipe")
    p.add_argument("--address", default="auto", help="Ray cluster: host:port of the head, or auto (default)")
    p.add_argument("--num-workers", type=int, default=1, help="training ranks (= GPUs when --gpus-per-worker 1)")
    p.add_argument("--gpus-per-worker", type=int, default=1, help="1 (one GPU per rank) or 0 for CPU training")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs Ray reserves per rank (default 1)")
    p.add_argument("--max-failures", type=int, default=3,
                   help="worker-group restarts (each resumes from the newest checkpoint); -1 = unlimited")
    p.add_argument("--name", help="Ray Train run name (default: lavla-<run dir name>)")
    p.add_argument("--storage-path", help="Ray Train's own state (default: <run dir>/ray_train; must be shared)")
    p.add_argument("--wait-for-resources", action="store_true",
                   help="skip the cluster-size check and let Ray wait for nodes (autoscaling clusters)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    a = parser().parse_args(ours)
    try:
        return run_job(a, overrides)
    except RayJobError as e:
        print(f"ray job error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


if __name__ == "__main__":
    sys.exit(main())
