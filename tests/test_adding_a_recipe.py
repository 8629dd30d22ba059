"""The recipe contract (``lavla.model.recipe``, ``lavla.model.registry``) and what adding a recipe
takes: one folder and one YAML. The example recipe lives outside the package, in
tests/fixtures/recipes/tiny_cnn, and is found through ``LAVLA_RECIPE_PATH``; it trains through
``deepspeed launcher/pretrain.py``, exports, evaluates and rolls out with no line changed elsewhere."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from lavla.data_service.config import DataConfig
from lavla.model.config import ModelConfig
from lavla.model.factory import build_model
from lavla.model.recipe import Recipe, capabilities_of
from lavla.model.registry import RECIPE_PATH_ENV, RECIPES, InputSpec, RecipeEntry, discover_recipes, entry_for, register_recipe
from tests.conftest import REPO, read_jsonl, run_deepspeed

EXAMPLE_RECIPES = REPO / "tests" / "fixtures" / "recipes"
EXAMPLE_YAML = REPO / "tests" / "fixtures" / "tiny_cnn.yaml"

# flag -> the methods a recipe promising it must implement (not inherit from Recipe's refusals)
PROMISES = {"predicts_actions": ("predict_action",), "has_lam": ("latent_action_model",),
            "latent_targets": ("predict_latents", "latent_targets"), "annotates": ("annotate", "quantizer"),
            "logs_media": ("media",)}


def _offers(model: Recipe, method: str) -> bool:
    return getattr(type(model), method) is not getattr(Recipe, method)


@pytest.mark.parametrize("name", ["lara", "lam", "lam_lapa", "lam_univla", "baseline", "la_align",
                                  "la_direct", "la_cond", "lapa_latent", "action_tokenizer"])
def test_every_recipe_keeps_the_promises_of_its_capabilities(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(RECIPES[name].config_cls(), DataConfig())
    caps = capabilities_of(model)
    for flag, methods in PROMISES.items():
        for method in methods:
            if getattr(caps, flag):
                assert _offers(model, method), f"{name}: capabilities.{flag} but no {method}"
    if caps.has_lam:
        lam = model.latent_action_model()
        assert callable(lam.encode) and callable(lam.decode)
    assert not caps.closed_loop or caps.predicts_actions
    if not caps.predicts_actions:  # what a recipe does not offer is refused by name, never guessed
        with pytest.raises(NotImplementedError, match=f"{type(model).__name__} does not offer predict_action"):
            model.predict_action({})


def test_capabilities_follow_the_config_where_it_decides() -> None:
    assert entry_for(RECIPES["lapa_latent"].config_cls()).name == "lapa_latent"
    assert not build_model(RECIPES["baseline"].config_cls(), DataConfig()).capabilities.has_lam
    la_direct = build_model(RECIPES["la_direct"].config_cls(), DataConfig()).capabilities
    assert la_direct.has_lam and la_direct.latent_targets and la_direct.closed_loop
    tokenizer = build_model(RECIPES["action_tokenizer"].config_cls(), DataConfig()).capabilities
    assert tokenizer.predicts_actions and not tokenizer.closed_loop  # it reconstructs the batch's own actions


def test_the_input_spec_is_checked_once_with_every_disagreement_named() -> None:
    spec = InputSpec(image_size=(("backbone.image_size", 64), ("lam.image_size", 32)),
                     action_horizon=(("head.action_horizon", 8),), action_dim=(("head.action_dim", 7),),
                     action_horizon_at_most=(("action_horizon", 16),), latent_labels="model.latent.source=offline")
    with pytest.raises(ValueError) as e:
        spec.check(DataConfig(image_size=64, action_horizon=8, max_action_dim=6))
    msg = str(e.value)
    assert "model.lam.image_size=32 != data.image_size=64" in msg and "backbone.image_size" not in msg
    assert "model.head.action_dim=7 != data.max_action_dim=6" in msg
    assert "model.action_horizon=16 > data.action_horizon=8" in msg and "needs data.latent_labels" in msg
    InputSpec(image_size=(("x", 64),)).check(DataConfig(image_size=64))


def test_the_registry_refuses_what_it_cannot_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lavla.model.registry.RECIPES", dict(RECIPES))

    @dataclass
    class Unregistered(ModelConfig):
        pass

    with pytest.raises(ValueError, match="no recipe registered for Unregistered; known: .*baseline"):
        build_model(Unregistered(), DataConfig())
    with pytest.raises(ValueError, match="registered twice"):
        register_recipe("baseline", builder="x:y")(Unregistered)

    @dataclass
    class NotARecipe(ModelConfig):
        pass

    import lavla.model.registry as registry

    registry.RECIPES["not_a_recipe"] = RecipeEntry("not_a_recipe", NotARecipe, "torch.nn:Identity")
    with pytest.raises(TypeError, match="a recipe's builder must return a lavla.model.recipe.Recipe"):
        build_model(NotARecipe(), DataConfig())
    with pytest.raises(TypeError, match="is not a lavla.model.recipe.Recipe"):
        capabilities_of(torch.nn.Linear(1, 1))
    monkeypatch.setenv(RECIPE_PATH_ENV, str(REPO / "no_such_dir"))
    with pytest.raises(FileNotFoundError, match="LAVLA_RECIPE_PATH: .*no_such_dir is not a directory"):
        discover_recipes()


@pytest.mark.slow
def test_a_recipe_added_as_one_folder_and_one_yaml_trains_evaluates_and_rolls_out(
        tmp_path, tiny_world_args, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import lavla.model.recipes as recipes_pkg

    monkeypatch.setattr(recipes_pkg, "__path__", list(recipes_pkg.__path__))  # undone after the test
    monkeypatch.setenv(RECIPE_PATH_ENV, str(EXAMPLE_RECIPES))
    monkeypatch.setattr("lavla.model.registry.RECIPES", dict(RECIPES))
    run = tmp_path / "run"
    world = [a for a in tiny_world_args[2:] if not a.startswith("--eval")]  # the private world, not the quickstart
    run_deepspeed(["--config", str(EXAMPLE_YAML), *world, f"--run.dir={run}", "--trainer.max_steps=30",
                   "--eval.every_steps=0"], num_ranks=1, env={RECIPE_PATH_ENV: str(EXAMPLE_RECIPES)})
    losses = [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 30 and sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses

    import lavla.model.registry as registry

    discover_recipes()  # this process now knows the folder too
    assert registry.RECIPES["tiny_cnn"].config_cls.__module__ == "lavla.model.recipes.tiny_cnn.config"
    from lavla.launcher.evaluate import main as evaluate_main
    from lavla.launcher.rollout import main as rollout_main
    from lavla.trainer.export import export_policy

    export = tmp_path / "export"
    assert export_policy(run, export)["recipe"] == "tiny_cnn"
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(export), "--max-batches", "2"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(printed[printed.index("{"):])
    assert 0.0 < metrics["action/l1"] < 1.0 and "action/skill" in metrics and "lam/recon_mse" not in metrics
    out = tmp_path / "rollout.json"
    assert rollout_main(["--policy", str(export), "--episodes", "2", "--max-steps", "6", "--out", str(out),
                         "--no-random-floor"]) == 0
    result = json.loads(out.read_text())
    assert result["episodes"] == 2 and 0.0 <= result["success_rate"] <= 1.0
