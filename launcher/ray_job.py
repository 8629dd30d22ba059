"""Run pretraining on an existing Ray cluster with Ray Train (one Ray actor per rank).

    python -m lavla.launcher.ray_job --config configs/<recipe>.yaml --address <head>:6379 \\
        [--num-workers 16 | --num-workers 8:16] [--gpus-per-worker 1] [--max-failures 3] [-- --a.b=v ...]

Each worker runs the same entry as ``deepspeed launcher/pretrain.py``: the config is loaded by
``trainer.config_io.load_config`` and trained by ``trainer.loop.run``. Ray Train's TorchTrainer
creates the process group and sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT,
which DeepSpeed then uses as is. The data service's decoders are Ray actors on the same cluster.

Failures: when a worker dies (process crash, node loss), Ray Train tears the worker group down
and starts a new one, up to ``--max-failures`` times; every attempt runs with ``--resume=auto``
and so continues from the newest complete checkpoint in ``run.dir``. The run dir must therefore
be on storage that every node sees (as for SLURM). Preemption signals are not used here: the
training loop runs in a worker thread, where Python cannot install signal handlers.

Elastic (``--num-workers MIN:MAX``): Ray Train runs as many workers as the cluster has room for,
between MIN and MAX. When a node is lost the group restarts at the size that still fits (down to
MIN; below MIN it waits for capacity), and every ``--resize-interval-s`` it checks for room to grow
and restarts at the larger size. Each restart resumes from the newest complete checkpoint: the
universal conversion loads it at the new world size, the sample plan continues at the same
global sample, and the global batch stays as configured (``trainer.batch_layout=nearest``: the
micro batch and accumulation adapt, or the nearest divisible global batch is taken and logged).
Each restart's cost (old -> new size, steps replayed, seconds lost) is logged as ``resize/*``.

The data service's decoders outlive worker-group restarts: the job gives them a name of its own
and a detached lifetime, so a restarted rank 0 attaches to the same warm decoders (the stream
does not depend on them either way), and the driver removes them when the job ends.
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
    from lavla.data_service.service.ray_cluster import worker_runtime_env

    env = worker_runtime_env()
    env.setdefault("env_vars", {}).update({k: v for k, v in os.environ.items()
                            if k.startswith(PASSTHROUGH_ENV_PREFIXES) and not _SECRET_RE.search(k)})
    return env


def parse_num_workers(text: str) -> tuple[int, int]:
    """``N`` -> (N, N); ``MIN:MAX`` -> (MIN, MAX) for an elastic job."""
    parts = text.split(":")
    try:
        lo, hi = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise RayJobError(f"--num-workers must be N or MIN:MAX, got {text!r}") from None
    if len(parts) > 2 or lo < 1 or hi < lo:
        raise RayJobError(f"--num-workers {text}: need 1 <= MIN <= MAX")
    return lo, hi


def service_overrides(overrides: Sequence[str], run_dir: Path) -> tuple[list[str], str]:
    """Decoders that survive worker-group restarts: a service name fixed for this run (Ray Train
    gives every attempt a new rendezvous, hence a new default name) and a detached lifetime (job
    decoders die with the rank 0 that created them). Returns the overrides and the name the
    driver removes at the end ("" when the user chose the name or lifetime)."""
    if any(o.startswith(("--data.service_name=", "--data.actor_lifetime=")) for o in overrides):
        return list(overrides), ""
    import hashlib

    name = f"lavla-{run_dir.name}-{hashlib.sha1(str(run_dir).encode()).hexdigest()[:8]}"
    return [*overrides, f"--data.service_name={name}", "--data.actor_lifetime=detached"], name


def elastic_overrides(overrides: Sequence[str]) -> list[str]:
    """An elastic job adapts its batch layout to the size it gets, unless the user decided."""
    if any(o.startswith("--trainer.batch_layout=") for o in overrides):
        return list(overrides)
    return [*overrides, "--trainer.batch_layout=nearest"]


def describe_layouts(cfg: Any, lo: int, hi: int) -> str:
    """What each world size in MIN..MAX will run, for the launch message."""
    from lavla.trainer.batch_layout import layouts_for_range

    lines = []
    for lay in layouts_for_range(cfg.trainer.global_batch_size, cfg.trainer.micro_batch_size, lo, hi):
        lines.append(f"  {lay.describe()}" + (f"  ({lay.change})" if lay.change else ""))
    return "\n".join(lines)


def run_job(a: argparse.Namespace, overrides: Sequence[str]) -> int:
    from lavla.trainer.config_io import ConfigError, load_config

    lo, hi = parse_num_workers(a.num_workers)
    elastic = hi > lo
    if elastic:
        overrides = elastic_overrides(overrides)
    if a.gpus_per_worker not in (0, 1):
        raise RayJobError(f"--gpus-per-worker must be 0 (CPU) or 1: DeepSpeed runs one rank per GPU, so use "
                          f"--num-workers=<GPUs> instead of {a.gpus_per_worker} GPUs per worker")
    try:  # validate before touching the cluster, with the run dir resolved against this shell
        cfg = load_config(["--config", a.config, *overrides])
    except ConfigError as e:
        raise RayJobError(f"config error: {e}") from e
    run_dir = Path(cfg.run.dir).resolve()
    service = ""
    if cfg.data.num_workers > 0:
        overrides, service = service_overrides(overrides, run_dir)

    if a.start_timeout_s:  # read by Ray Train's controller, which gets the driver's environment
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(a.start_timeout_s)
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
            _check_resources(ray, lo, a.cpus_per_worker, a.gpus_per_worker, data_cpus)
        resources = {"CPU": a.cpus_per_worker, **({"GPU": 1} if a.gpus_per_worker else {}), **a.worker_resources}
        # By reference (module + name), also when this file runs as __main__: workers import it.
        from lavla.launcher.ray_job import train_worker as entry

        trainer = TorchTrainer(
            entry,
            train_loop_config={"argv": argv, "cwd": os.getcwd()},
            torch_config=TorchConfig(backend="nccl" if a.gpus_per_worker else "gloo"),
            scaling_config=ScalingConfig(num_workers=(lo, hi) if elastic else lo, use_gpu=bool(a.gpus_per_worker),
                                         resources_per_worker=resources, placement_strategy=a.placement_strategy,
                                         elastic_resize_monitor_interval_s=a.resize_interval_s),
            run_config=RunConfig(name=a.name or f"lavla-{run_dir.name}",
                                 storage_path=a.storage_path or str(run_dir / "ray_train"),
                                 failure_config=FailureConfig(max_failures=a.max_failures)),
        )
        size = f"{lo} to {hi} (elastic)" if elastic else str(lo)
        print(f"[ray_job] {size} worker(s) on {address}, run dir {run_dir}, "
              f"max failures {a.max_failures}: {shlex.join(argv)}", flush=True)
        if elastic:
            print(f"[ray_job] batch layout at each size:\n{describe_layouts(cfg, lo, hi)}", flush=True)
        result = trainer.fit()
    finally:
        if service:
            from lavla.data_service.service.ray_service import shutdown_service

            try:
                killed = shutdown_service(ray, service, cfg.data.ray_namespace)
                print(f"[ray_job] removed the {killed} decoder(s) of data service {service!r}", flush=True)
            except Exception as e:  # never hide the job's own outcome
                print(f"[ray_job] could not remove data service {service!r} ({e}); remove it with: python -m "
                      f"lavla.data_service.service.ray_service --address {a.address} --shutdown {service}", file=sys.stderr)
        ray.shutdown()
    if result.error is not None:
        print(f"[ray_job] training failed: {result.error}", file=sys.stderr)
        return 1
    if (result.metrics or {}).get("exit_reason") == "nonfinite":
        print(f"[ray_job] training stopped: {result.metrics['error']}", file=sys.stderr)
        return EXIT_NONFINITE
    print(f"[ray_job] done: {result.metrics}", flush=True)
    return 0


def _resource_dict(text: str) -> dict[str, float]:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, (int, float)) and v >= 0
                                              for k, v in value.items()):
        raise argparse.ArgumentTypeError('expected an object of resource name -> amount, e.g. {"trainer_slot": 1}')
    return {k: float(v) for k, v in value.items()}


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
    p.add_argument("--num-workers", default="1",
                   help="training ranks (= GPUs when --gpus-per-worker 1): N, or MIN:MAX for an elastic job that "
                        "shrinks on node loss (not below MIN) and grows when capacity appears (up to MAX)")
    p.add_argument("--resize-interval-s", type=float, default=60.0,
                   help="elastic jobs: how often a healthy group checks for room to grow (default 60; each "
                        "growth restarts the group and replays the steps since the last checkpoint)")
    p.add_argument("--gpus-per-worker", type=int, default=1, help="1 (one GPU per rank) or 0 for CPU training")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs Ray reserves per rank (default 1)")
    p.add_argument("--start-timeout-s", type=float, default=0.0,
                   help="how long a worker group may take to start before Ray Train gives up and decides the size "
                        "again (default: Ray's 60 s). Right after a node loss the dead node's resources still count "
                        "until Ray marks it dead, so the first restart may wait this long for workers it cannot place")
    p.add_argument("--worker-resources", type=_resource_dict, default={},
                   help="extra Ray resources each trainer worker reserves, as JSON (e.g. '{\"trainer_slot\": 1}' with "
                        "nodes started with --resources='{\"trainer_slot\": 1}': one rank per node, and the CPUs "
                        "left to the data service)")
    p.add_argument("--placement-strategy", default="PACK", choices=["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"],
                   help="how Ray places the workers on nodes (default PACK: fill nodes; SPREAD: one per node where "
                        "possible, so that losing a node loses fewer ranks)")
    p.add_argument("--max-failures", type=int, default=3,
                   help="worker-group restarts after failures (each resumes from the newest checkpoint; node "
                        "losses of an elastic job count too); -1 = unlimited")
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
