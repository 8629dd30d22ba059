"""Bring your own data, end to end through ``deepspeed launcher/pretrain.py`` on CPU: the config
``lavla-data inspect --recipe`` writes for an RLDS dir, a LeRobot v2.1 root and a LeRobot v3.0 root
trains unchanged, and a mixture of the registry's synthetic world with an inline-spec RLDS dataset
and a LeRobot dataset trains on 2 ranks and resumes exactly (same losses, same sample ids)."""

from __future__ import annotations

import re

import pytest
import yaml

from lavla.data_service.cli import main as lavla_data
from lavla.data_service.config import SyntheticDataConfig
from lavla.data_service.synthetic import generate_synthetic_world
from tests.conftest import REPO, read_jsonl, run_deepspeed

pytestmark = pytest.mark.slow

LEROBOT = REPO / "tests" / "fixtures" / "lerobot"

SMALL = ["--trainer.global_batch_size=4", "--trainer.micro_batch_size=2", "--trainer.log_every=1",
         "--eval.every_steps=0", "--optim.warmup_steps=0", "--data.log_sample_ids=true"]


@pytest.fixture(scope="module")
def own_config(tmp_path_factory):
    """A user's RLDS dataset (the synthetic world under another name) and the config inspect writes for it."""
    tmp = tmp_path_factory.mktemp("byo")
    data = generate_synthetic_world(SyntheticDataConfig(enabled=True, root=str(tmp / "data"), train_episodes=6,
                                                        val_episodes=2, episode_length=12, image_size=32))
    out = tmp / "my_robot.yaml"
    assert lavla_data(["inspect", str(data), "--name", "my_robot", "--fps", "10", "--recipe", "baseline",
                       "--out", str(out)]) == 0
    return out, data


def _inspect(path, name: str, out) -> None:
    assert lavla_data(["inspect", str(path), "--name", name, "--recipe", "baseline", "--out", str(out)]) == 0


@pytest.mark.parametrize("kind", ["rlds", "lerobot_v2.1", "lerobot_v3.0"])
def test_the_written_config_trains_unchanged(tmp_path, own_config, kind):
    if kind == "rlds":
        cfg_path, name = own_config[0], "my_robot"
    else:
        pytest.importorskip("av")
        cfg_path, name = tmp_path / "lerobot.yaml", "my_lerobot"
        _inspect(LEROBOT / kind.split("_")[1], name, cfg_path)
    run_dir = tmp_path / "run"
    run_deepspeed(["--config", str(cfg_path), f"--run.dir={run_dir}", "--trainer.max_steps=3", *SMALL], num_ranks=1)
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    (entry,) = resolved["data"]["datasets"]
    assert entry["name"] == name and entry["spec"]["image_primary_key"]
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3] and all(r["loss"] > 0 for r in records)


def test_registry_inline_and_lerobot_mixture_on_two_ranks_resumes_exactly(tmp_path, own_config):
    cfg_path, data = own_config
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["data"]["datasets"].insert(0, {"name": "synthetic_world", "path": str(data), "split": "train", "weight": 1.0})
    pytest.importorskip("av")
    _inspect(LEROBOT / "v3.0", "my_lerobot", tmp_path / "lerobot.yaml")
    cfg["data"]["datasets"] += yaml.safe_load((tmp_path / "lerobot.yaml").read_text())["data"]["datasets"]
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(yaml.safe_dump(cfg))
    base = ["--config", str(mixed), "--checkpoint.every_steps=2", *SMALL]
    ref, res = tmp_path / "ref", tmp_path / "resumed"
    proc = run_deepspeed([*base, f"--run.dir={ref}", "--trainer.max_steps=4"], num_ranks=2)
    plan_line = next(line for line in (proc.stdout + proc.stderr).splitlines() if "data plan" in line)
    # shares follow transitions: 6 episodes of the world under each name, 36 LeRobot frames
    shares = {n: float(re.search(rf"{n} ([\d.]+)%", plan_line).group(1)) for n in ("synthetic_world", "my_robot", "my_lerobot")}
    assert shares["synthetic_world"] == shares["my_robot"] > shares["my_lerobot"] > 0, plan_line
    run_deepspeed([*base, f"--run.dir={res}", "--trainer.max_steps=2"], num_ranks=2)
    run_deepspeed([*base, f"--run.dir={res}", "--trainer.max_steps=4", "--resume=auto"], num_ranks=2)
    a = {r["step"]: r for r in read_jsonl(ref / "metrics.jsonl")}
    b = {r["step"]: r for r in read_jsonl(res / "metrics.jsonl")}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5, abs=1e-7)
    def ids(run_dir, rank: int) -> dict:
        return {(r["step"], r["micro"]): r["sample_ids"] for r in read_jsonl(run_dir / f"samples.rank{rank}.jsonl")}

    for rank in (0, 1):
        assert ids(ref, rank) == ids(res, rank)
