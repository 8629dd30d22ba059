"""Config loading: YAML + CLI overrides, and errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lavla.trainer.config import PretrainConfig
from lavla.trainer.config_io import ConfigError, dump_config, load_config

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def test_quickstart_loads_with_overrides():
    cfg = load_config(["--config", QUICKSTART, "--trainer.max_steps=7", "--run.dir=/tmp/x", "--local_rank=0"])
    assert isinstance(cfg, PretrainConfig)
    assert cfg.trainer.max_steps == 7
    assert cfg.run.dir == "/tmp/x"
    assert cfg.data.synthetic.enabled is True
    assert cfg.data.datasets[0].name == "synthetic_world"


def test_cli_typo_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer\.max_stpes'.*trainer\.max_steps"):
        load_config(["--config", QUICKSTART, "--trainer.max_stpes=3"])


def test_yaml_typo_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_stpes: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(["--config", str(bad)])
    assert str(bad) in str(e.value) and "trainer.max_stpes" in str(e.value)


def test_wrong_type_names_key_and_file(tmp_path):
    bad = tmp_path / "bad_type.yaml"
    bad.write_text("trainer:\n  max_steps: many\n")
    with pytest.raises(ConfigError) as e:
        load_config(["--config", str(bad)])
    assert str(bad) in str(e.value) and "trainer.max_steps" in str(e.value)


def test_wrong_type_on_command_line_blames_command_line():
    with pytest.raises(ConfigError, match=r"command line.*optim\.lr"):
        load_config(["--config", QUICKSTART, "--optim.lr=fast"])


def test_invalid_value_is_rejected():
    with pytest.raises(ConfigError, match="trainer.precision"):
        load_config(["--config", QUICKSTART, "--trainer.precision=fp8"])


def test_unknown_recipe_type(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("model:\n  type: not_a_recipe\n")
    with pytest.raises(ConfigError, match="not_a_recipe"):
        load_config(["--config", str(bad)])


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config(["--config", "/nonexistent/x.yaml"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(["--config", QUICKSTART, "--optim.lr=0.005", "--trainer.max_steps=11"])
    out = tmp_path / "resolved.yaml"
    out.write_text(dump_config(cfg))
    assert yaml.safe_load(out.read_text())["trainer"]["max_steps"] == 11
    again = load_config(["--config", str(out)])
    assert again == cfg


@pytest.mark.parametrize("recipe", sorted(p.name for p in (Path(QUICKSTART).parent).glob("*.yaml")))
def test_every_recipe_yaml_loads(recipe):
    cfg = load_config(["--config", str(Path(QUICKSTART).parent / recipe)])
    assert cfg.trainer.max_steps >= 0


def test_new_sections_override_from_command_line():
    cfg = load_config(["--config", QUICKSTART, "--profile.steps=3:5", "--logging.media_every=10",
                       "--trainer.activation_checkpointing=true", "--trainer.checkpoint_block_classes=[Block, Layer]",
                       "--checkpoint.convert_on_world_size_change=false"])
    assert cfg.profile.window() == (3, 5) and cfg.logging.media_every == 10
    assert cfg.trainer.checkpoint_block_classes == ["Block", "Layer"]
    assert cfg.checkpoint.convert_on_world_size_change is False


def test_bad_profile_steps_names_the_field():
    with pytest.raises(ConfigError, match="profile.steps"):
        load_config(["--config", QUICKSTART, "--profile.steps=9:2"])


def test_the_data_side_takes_its_shapes_from_the_recipe() -> None:
    """A shape is stated once: configs/full/lara.yaml states the chunk and widths in the model only,
    and the data config takes them; a data value stated in the YAML or on the command line is kept
    (and the model build names the disagreement); model fields that disagree decide nothing."""
    from lavla.model.factory import build_model
    from lavla.trainer.config_io import load_config

    full = load_config(["--config", str(REPO / "configs" / "full" / "lara.yaml")])
    d = full.data
    assert (d.image_size, d.action_horizon, d.max_action_dim, d.max_proprio_dim) == (224, 16, 32, 64)
    assert "action_horizon" not in (yaml.safe_load((REPO / "configs" / "full" / "lara.yaml").read_text())["data"])

    quick = REPO / "configs" / "quickstart.yaml"
    stated = load_config(["--config", str(quick), "--data.image_size=32"])
    assert stated.data.image_size == 32
    with pytest.raises(ValueError, match=r"model.backbone.image_size=64 != data.image_size=32; "
                                         r"model.lam.image_size=64 != data.image_size=32"):
        build_model(stated.model, stated.data)
    split = load_config(["--config", str(quick), "--model.lam.image_size=32"])
    assert split.data.image_size == 64  # the default: backbone (64) and LAM (32) disagree
    with pytest.raises(ValueError, match=r"model.lam.image_size=32 != data.image_size=64"):
        build_model(split.model, split.data)
    both = load_config(["--config", str(quick), "--model.lam.image_size=32", "--model.backbone.image_size=32"])
    assert both.data.image_size == 32
