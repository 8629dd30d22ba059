"""``launcher.ray_job`` without a cluster: the trainer command line, the runtime env, and the
errors that must come before anything is started."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from lavla.launcher.ray_job import (RayJobError, _check_resources, describe_layouts, elastic_overrides, main,
                                   parse_num_workers, parser, runtime_env, service_overrides, trainer_argv)

from .conftest import REPO


def test_trainer_argv_forces_what_ray_train_needs(tmp_path: Path) -> None:
    argv = trainer_argv("configs/quickstart.yaml", ["--trainer.max_steps=5"], tmp_path / "run", "10.0.0.1:6379")
    assert argv[:2] == ["--config", str(Path("configs/quickstart.yaml").resolve())]
    assert argv[2:] == ["--trainer.max_steps=5", "--resume=auto", f"--run.dir={tmp_path / 'run'}",
                        "--data.ray_address=10.0.0.1:6379", "--checkpoint.save_on_signal=false"]
    with pytest.raises(RayJobError, match="--resume=auto"):
        trainer_argv("c.yaml", ["--resume=never"], tmp_path, "a:1")


def test_runtime_env_passes_settings_not_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAVLA_CACHE_DIR", "/scratch/cache")
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")
    monkeypatch.setenv("WANDB_API_KEY", "hunter2")
    monkeypatch.setenv("UNRELATED", "x")
    env = runtime_env()["env_vars"]
    assert env["LAVLA_CACHE_DIR"] == "/scratch/cache" and env["NCCL_SOCKET_IFNAME"] == "ib0"
    assert "WANDB_API_KEY" not in env and "UNRELATED" not in env
    # lavla comes from the installed environment; a checkout on sys.path would be a second copy.
    assert str(REPO) not in env.get("PYTHONPATH", "").split(":")


def test_too_small_cluster_is_named() -> None:
    ray = SimpleNamespace(cluster_resources=lambda: {"CPU": 8.0, "GPU": 4.0})
    _check_resources(ray, workers=4, cpus=1, gpus=1, data_cpus=4)
    with pytest.raises(RayJobError, match=r"GPU: need 8, cluster has 4"):
        _check_resources(ray, workers=8, cpus=0.5, gpus=1, data_cpus=0)
    with pytest.raises(RayJobError, match=r"CPU: need 12, cluster has 8"):
        _check_resources(ray, workers=4, cpus=1, gpus=1, data_cpus=8)


def test_bad_options_fail_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(REPO / "configs" / "quickstart.yaml")
    assert main(["--config", config, "--gpus-per-worker", "2"]) == 2
    assert "one rank per GPU" in capsys.readouterr().err
    assert main(["--config", config, "--", "--trainer.max_stpes=1"]) == 2
    assert "trainer.max_steps" in capsys.readouterr().err


def test_num_workers_fixed_or_elastic_range() -> None:
    assert parse_num_workers("4") == (4, 4)
    assert parse_num_workers("2:8") == (2, 8)
    for bad in ("0", "4:2", "a", "1:2:3", ":3"):
        with pytest.raises(RayJobError, match="--num-workers"):
            parse_num_workers(bad)


def test_elastic_jobs_adapt_the_batch_layout_unless_told_otherwise() -> None:
    assert elastic_overrides(["--a.b=1"]) == ["--a.b=1", "--trainer.batch_layout=nearest"]
    assert elastic_overrides(["--trainer.batch_layout=exact"]) == ["--trainer.batch_layout=exact"]


def test_launch_report_lists_the_layout_of_every_size() -> None:
    from lavla.trainer.config import PretrainConfig, TrainerConfig

    text = describe_layouts(PretrainConfig(trainer=TrainerConfig(global_batch_size=8, micro_batch_size=4)), 1, 3)
    lines = text.splitlines()
    assert len(lines) == 3 and "micro 4 x accum 2 = global 8" in lines[0] and "global 9" in lines[2]


def test_worker_resources_must_be_a_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    a = parser().parse_args(["--config", "x.yaml", "--worker-resources", '{"trainer_slot": 1}'])
    assert a.worker_resources == {"trainer_slot": 1.0}
    with pytest.raises(SystemExit):
        parser().parse_args(["--config", "x.yaml", "--worker-resources", "[1]"])
    assert "resource name" in capsys.readouterr().err


def test_decoders_get_a_run_scoped_name_and_outlive_group_restarts(tmp_path: Path) -> None:
    run_dir = tmp_path / "exp1"
    overrides, name = service_overrides(["--a.b=1"], run_dir)
    assert name.startswith("lavla-exp1-") and overrides == ["--a.b=1", f"--data.service_name={name}",
                                                            "--data.actor_lifetime=detached"]
    assert service_overrides(["--a.b=1"], run_dir)[1] == name  # every attempt of the run: the same service
    assert service_overrides(["--data.actor_lifetime=job"], run_dir) == (["--data.actor_lifetime=job"], "")
