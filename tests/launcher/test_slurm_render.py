"""Golden batch scripts for several job shapes (``LAVLA_UPDATE_GOLDEN=1`` rewrites them)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lavla.launcher.slurm import main

from .conftest import HERE, REPO

GOLDEN = HERE / "golden"
SHAPES = {
    "1x1": ["--nodes", "1", "--gpus-per-node", "1"],
    "2x8_ray": ["--nodes", "2", "--gpus-per-node", "8", "--time", "12:00:00", "--",
                "--data.num_workers=8", "--trainer.max_steps=5000"],
    "3x8_elastic": ["--nodes", "3", "--min-nodes", "2", "--gpus-per-node", "8", "--", "--trainer.max_steps=5000"],
    "4x8_partition_account": ["--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu-long", "--account",
                              "proj123", "--time", "2-00:00:00", "--grace-seconds", "600", "--sbatch-arg=--exclusive",
                              "--container-image", "registry.example.com/lavla:0.1.0", "--container-mounts",
                              "/scratch:/scratch", "--", "--data.num_workers=16", "--trainer.precision=bf16"],
}


def _render(shape: str, tmp_path: Path) -> str:
    run_dir = tmp_path / "runs" / shape
    args = SHAPES[shape]
    ours, rest = (args[: args.index("--")], args[args.index("--"):]) if "--" in args else (args, [])
    assert main(["--config", "configs/quickstart.yaml", *ours, "--run-dir", str(run_dir), "--dry-run", *rest]) == 0
    text = (run_dir / "slurm" / "job.sbatch").read_text()
    # Machine-specific paths become placeholders; everything else must match byte for byte.
    return text.replace(str(tmp_path), "<TMP>").replace(str(REPO), "<REPO>")


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_render_matches_golden(shape: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    text = _render(shape, tmp_path)
    golden = GOLDEN / f"{shape}.sbatch"
    if os.environ.get("LAVLA_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.is_file(), f"missing {golden}: run with LAVLA_UPDATE_GOLDEN=1 once"
    assert text == golden.read_text(), f"{shape}: rendered script differs from {golden} (LAVLA_UPDATE_GOLDEN=1 to accept)"
    subprocess.run(["bash", "-n", str(tmp_path / "runs" / shape / "slurm" / "job.sbatch")], check=True)


def test_shapes_have_their_directives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    one, two, four = (_render(s, tmp_path) for s in ("1x1", "2x8_ray", "4x8_partition_account"))
    for text, n, g in ((one, 1, 1), (two, 2, 8), (four, 4, 8)):
        for d in (f"--nodes={n}", "--ntasks-per-node=1", f"--gpus-per-node={g}", f"--cpus-per-task={8 * g}",
                  "--requeue", "--open-mode=append"):
            assert f"#SBATCH {d}\n" in text
        assert "--resume=auto" in text and "deepspeed --node_rank=\"$SLURM_NODEID\"" in text
    assert "ray start" not in one and "--data.ray_address" not in one
    # 8 decoders x 1 CPU over 2 nodes; 16 over 4: each node gives the service 4 CPUs.
    assert "--num-cpus=4 --num-gpus=0" in two and "--num-cpus=4 --num-gpus=0" in four
    assert "#SBATCH --signal=B:USR1@600\n" in four and "#SBATCH --partition=gpu-long\n" in four
    assert "#SBATCH --account=proj123\n" in four and "#SBATCH --exclusive\n" in four
    assert "--container-image=registry.example.com/lavla:0.1.0" in four and "cd <REPO>" not in four
    assert "cd <REPO> || exit 1" in one


def test_elastic_job_runs_torchrun_agents_that_survive_a_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    text = _render("3x8_elastic", tmp_path)
    assert "#SBATCH --nodes=2-3\n" in text and "#SBATCH --no-kill\n" in text and "MIN_NODES=2\n" in text
    assert "exec torchrun" in text and "deepspeed --node_rank" not in text
    assert '--nnodes="$MIN_NODES:3"' in text and "--rdzv-backend=c10d" in text and "--max-restarts=10" in text
    assert "--no-kill" in text.split("run_training() {")[1].split("TRAIN_PID")[0]  # the step survives a node too
    assert "--resume=auto" in text and "--trainer.batch_layout=nearest" in text
    fixed = _render("1x1", tmp_path)
    assert "--no-kill" not in fixed and "batch_layout" not in fixed and "torchrun" not in fixed


def test_bad_elastic_options_are_refused(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    base = ["--config", "configs/quickstart.yaml", "--gpus-per-node", "8", "--dry-run"]
    assert main([*base, "--nodes", "2", "--min-nodes", "2"]) == 2
    assert "--min-nodes < --nodes" in capsys.readouterr().err
    assert main([*base, "--nodes", "2", "--min-nodes", "1", "--max-restarts", "-1"]) == 2
    assert "--max-restarts" in capsys.readouterr().err
