"""Policy export: DeepSpeed ZeRO-3 checkpoint -> self-contained directory -> ``load_policy`` without
DeepSpeed -> ``predict_action`` / ``unnormalize_action``.

One tiny LARA run (2 ranks, ZeRO-3, 3 steps, action dims padded 7 -> 8 so that padded outputs are
exercised) is trained once per module and exported once; the tests then check the export against
DeepSpeed's own consolidation and the model built with ``build_model``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import REPO, run_deepspeed

pytestmark = pytest.mark.slow

A_PADDED = 8  # the synthetic world has 7 action dims; the model predicts 8, the last one padding
B = 4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_world_args) -> Path:
    run = tmp_path_factory.mktemp("export_run") / "run"
    run_deepspeed([*tiny_world_args, f"--run.dir={run}", "--trainer.max_steps=3", "--checkpoint.every_steps=2",
                   "--checkpoint.keep_last=5", "--checkpoint.save_final=true", f"--data.max_action_dim={A_PADDED}",
                   f"--model.head.action_dim={A_PADDED}"], num_ranks=2)
    assert (run / "checkpoints" / "latest").read_text() == "step_00000003"
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> tuple[Path, dict]:
    from lavla.trainer.export import export_policy

    out = tmp_path_factory.mktemp("export") / "policy"
    meta = export_policy(run_dir, out)
    return out, meta


@pytest.fixture(scope="module")
def policy(exported):
    from lavla.model.policy_io import load_policy

    return load_policy(exported[0])


def _pipeline(ckpt: Path):
    """The run's own data pipeline, in process (rank 0 of 1, micro batch B)."""
    from lavla.data_service.pipeline import build_data
    from lavla.trainer.config_io import load_config

    cfg = load_config(["--config", str(ckpt / "config.yaml")])
    return build_data(cfg.data, rank=0, world_size=1, micro_batch_size=B, grad_accum=1, is_local_leader=True,
                      barrier=lambda: None)


@pytest.fixture(scope="module")
def data_bundle(run_dir):
    bundle = _pipeline(run_dir / "checkpoints" / "step_00000003")
    yield bundle
    bundle.client.close()


@pytest.fixture(scope="module")
def batch(data_bundle) -> dict:
    return data_bundle.client.next_micro_batch()


def _consolidated(ckpt: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)


def test_export_equals_the_consolidated_fp32_state(run_dir, exported):
    from lavla.model.policy_io import read_weights, sha256_file

    out, meta = exported
    ckpt = run_dir / "checkpoints" / "step_00000003"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "export.json", "model.safetensors",
                                                      "normalization_stats.json"]
    assert not list(out.parent.glob(".policy.tmp*"))  # the temporary directory was renamed away

    exported_sd = read_weights(out)
    fp32 = _consolidated(ckpt)
    module_states = torch.load(ckpt / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False)
    buffers = set(module_states["buffer_names"])
    assert buffers and any("quantizer" in b for b in buffers)
    assert exported_sd.keys() == fp32.keys()
    for name, value in exported_sd.items():
        if name in buffers:  # saved dtype kept (zero_to_fp32 casts the fp64 code counts to fp32)
            ref = module_states["module"][name]
            assert value.dtype == ref.dtype and torch.equal(value, ref), name
        else:
            assert value.dtype == torch.float32 and torch.equal(value, fp32[name]), name
    assert exported_sd["lam.quantizer.usage_total"].dtype == torch.float64
    assert exported_sd["lam.quantizer.usage_total"].sum() > 0  # trained statistics, not a fresh init

    assert meta == json.loads((out / "export.json").read_text())
    assert meta["format"] == "lavla-policy" and meta["recipe"] == "lara" and meta["step"] == 3
    assert meta["source"]["checkpoint"] == str(ckpt.resolve()) and meta["source"]["world_size"] == 2
    assert meta["weights"]["sha256"] == sha256_file(out / "model.safetensors")
    params = {k: v for k, v in fp32.items() if k not in buffers}
    assert meta["parameters"] == sum(v.numel() for v in params.values())
    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["deepspeed"]
    assert meta["normalization"]["mode"] == "bounds_q99"
    assert meta["normalization"]["datasets"]["synthetic_world"]["action_absolute_mask"] == [False] * 6 + [True]
    assert json.loads((out / "normalization_stats.json").read_text()) == \
        json.loads((ckpt / "normalization_stats.json").read_text())
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["model"]["type"] == "lara" and resolved["data"]["max_action_dim"] == A_PADDED
    assert resolved["trainer"]["max_steps"] == 3  # the full resolved config, not only model/data


def test_load_policy_in_a_fresh_process_does_not_import_deepspeed(exported, policy, batch, tmp_path):
    out, _ = exported
    report, actions = _predict_in_fresh_process(out, batch, tmp_path)
    assert report == {"deepspeed": [], "trainer": [], "training": False}
    # The other process's policy predicts what this one does.
    here = policy.predict_action(batch, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(actions, here, rtol=1e-5, atol=1e-6)


def _predict_in_fresh_process(export_dir: Path, batch: dict, tmp_path: Path, block_deepspeed: bool = False):
    """``load_policy`` + ``predict_action`` (generator seed 7) in a new interpreter; returns
    (``{"deepspeed": imported deepspeed modules, "trainer": imported trainer modules, "training": bool}``,
    actions). ``block_deepspeed`` makes ``import deepspeed`` fail there, as on a robot without it."""
    torch.save(dict(batch), tmp_path / "batch.pt")
    script = f"""
import sys, json, torch
if {block_deepspeed!r}:
    sys.modules["deepspeed"] = None  # import deepspeed -> ImportError; find_spec -> None
from lavla.model.policy_io import load_policy
p = load_policy({str(export_dir)!r})
batch = torch.load({str(tmp_path / 'batch.pt')!r}, weights_only=False)
a = p.predict_action(batch, generator=torch.Generator().manual_seed(7))
torch.save(a, {str(tmp_path / 'actions.pt')!r})
print(json.dumps({{"deepspeed": sorted(m for m, v in sys.modules.items() if m.split('.')[0] == 'deepspeed' and v),
                  "trainer": sorted(m for m in sys.modules if m.split('.')[0] == 'trainer'),
                  "training": p.module.training}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), torch.load(tmp_path / "actions.pt")


def test_predict_action_is_seeded_finite_and_zero_in_padded_dims(policy, batch):
    n = policy.data_cfg.action_horizon
    assert not batch["action_dim_mask"][:, -1].any() and batch["action_dim_mask"][:, :7].all()
    a1 = policy.predict_action(batch, generator=torch.Generator().manual_seed(0))
    a2 = policy.predict_action(batch, generator=torch.Generator().manual_seed(0))
    a3 = policy.predict_action(batch, generator=torch.Generator().manual_seed(1))
    assert a1.shape == (B, n, A_PADDED) and a1.dtype == torch.float32
    assert torch.isfinite(a1).all()
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    assert (a1[..., ~batch["action_dim_mask"][0]] == 0).all()
    assert a1[..., :7].abs().sum() > 0
    a_more = policy.predict_action(batch, num_steps=8, generator=torch.Generator().manual_seed(0))  # kwargs forwarded
    assert a_more.shape == a1.shape and not torch.equal(a_more, a1)


def test_loaded_forward_loss_equals_build_model_with_consolidated_state(run_dir, policy, batch):
    from lavla.model.factory import build_model
    from lavla.trainer.config_io import load_config

    ckpt = run_dir / "checkpoints" / "step_00000003"
    cfg = load_config(["--config", str(ckpt / "config.yaml")])
    ref = build_model(cfg.model, cfg.data)
    missing, unexpected = ref.load_state_dict(_consolidated(ckpt), strict=True)
    assert not missing and not unexpected
    ref.eval()
    with torch.no_grad():
        torch.manual_seed(123)
        loss_ref, metrics_ref = ref(batch)
        torch.manual_seed(123)
        loss, metrics = policy.module(batch)
    assert torch.isfinite(loss) and loss.item() > 0
    assert loss.item() == loss_ref.item()
    for key in ("loss/flow", "loss/align", "loss/lam"):
        if key in metrics_ref:
            assert metrics[key].item() == metrics_ref[key].item(), key


def test_unnormalize_action_inverts_the_pipeline_normalization(policy, data_bundle, batch):
    stats = policy.stats["synthetic_world"]["action"]
    q01, q99 = np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)
    # Known values: model-space 0 is the middle of [q01, q99], -1 is q01; the gripper passes through.
    y = np.zeros((1, 1, A_PADDED), np.float32)
    y[..., 6] = 1.0
    raw = policy.unnormalize_action(torch.from_numpy(y), "synthetic_world")
    assert isinstance(raw, torch.Tensor) and raw.shape == (1, 1, 7)
    np.testing.assert_allclose(raw[0, 0, :6].numpy(), (q01[:6] + q99[:6]) / 2, rtol=1e-5, atol=1e-6)
    assert raw[0, 0, 6].item() == 1.0
    y[..., :6] = -1.0
    np.testing.assert_allclose(policy.unnormalize_action(y, "synthetic_world")[0, 0, :6], q01[:6], rtol=1e-5, atol=1e-6)

    # The pipeline's own normalizer: raw -> normalized -> (padded) -> unnormalize_action == raw.
    pipeline_norm = data_bundle.normalizers[0]
    raw_in = q01 + np.linspace(0.1, 0.9, 7, dtype=np.float32) * (q99 - q01)
    raw_in[6] = 0.0  # gripper closed
    model_space = np.zeros(A_PADDED, np.float32)
    model_space[:7] = pipeline_norm.normalize(raw_in, "action")
    np.testing.assert_allclose(policy.unnormalize_action(model_space, "synthetic_world"), raw_in, rtol=1e-5, atol=1e-6)

    # And on a real batch: unnormalized, then normalized again by the pipeline, gives the batch back.
    back = pipeline_norm.normalize(policy.unnormalize_action(batch["action"], "synthetic_world").numpy(), "action")
    np.testing.assert_allclose(back, batch["action"][..., :7].numpy(), atol=1e-5)
    # Robot-side input: raw proprio -> the batch's normalized, padded proprio field.
    pstats = policy.stats["synthetic_world"]["proprio"]
    raw_p = np.asarray(pstats["q01"], np.float32) + 0.3 * (np.asarray(pstats["q99"], np.float32) -
                                                           np.asarray(pstats["q01"], np.float32))
    want_p = np.zeros(policy.data_cfg.max_proprio_dim, np.float32)
    want_p[: raw_p.shape[0]] = pipeline_norm.normalize(raw_p, "proprio")
    np.testing.assert_array_equal(policy.normalize_proprio(raw_p, "synthetic_world"), want_p)
    with pytest.raises(KeyError, match="no normalization statistics"):
        policy.unnormalize_action(y, "bridge_orig")


def test_altered_or_truncated_weights_are_refused(exported, tmp_path):
    from lavla.model.policy_io import PolicyLoadError, load_policy

    src, _ = exported
    flipped = tmp_path / "flipped"
    shutil.copytree(src, flipped)
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (flipped / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(PolicyLoadError, match="sha256"):
        load_policy(flipped)

    truncated = tmp_path / "truncated"
    shutil.copytree(src, truncated)
    with open(truncated / "model.safetensors", "r+b") as f:
        f.truncate(len(data) - 100)
    with pytest.raises(PolicyLoadError, match="truncated"):
        load_policy(truncated)


def test_incomplete_checkpoint_is_refused_naming_it(run_dir, tmp_path):
    from lavla.trainer.export import (
        IncompleteCheckpointError,
        export_policy,
        resolve_checkpoint,
    )

    run = tmp_path / "run"
    shutil.copytree(run_dir / "checkpoints" / "step_00000002", run / "checkpoints" / "step_00000002")
    cut = run / "checkpoints" / "step_00000004"
    shutil.copytree(run_dir / "checkpoints" / "step_00000003", cut)
    (cut / "COMPLETE").unlink()  # a save killed before its marker

    assert resolve_checkpoint(run).path == run / "checkpoints" / "step_00000002"  # newest *complete*, as resume
    assert resolve_checkpoint(run_dir).path.name == "step_00000003"
    assert resolve_checkpoint(run_dir, tag="step_00000002").path.name == "step_00000002"
    with pytest.raises(IncompleteCheckpointError, match="step_00000004.*incomplete"):
        export_policy(cut, tmp_path / "out")
    with pytest.raises(IncompleteCheckpointError, match="step_00000004"):
        resolve_checkpoint(run, tag="step_00000004")
    assert not (tmp_path / "out").exists()

    proc = subprocess.run([sys.executable, "-m", "lavla.launcher.export_policy", str(cut), "--out", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "step_00000004" in proc.stderr and "COMPLETE" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_exports_a_tag_and_refuses_to_overwrite(run_dir, tmp_path):
    from lavla.model.policy_io import load_policy, read_weights

    out = tmp_path / "cli_policy"
    cmd = [sys.executable, "-m", "lavla.launcher.export_policy", str(run_dir), "--out", str(out), "--tag", "step_00000002"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads(proc.stdout)  # stdout holds export.json only (DeepSpeed's chatter goes to stderr)
    assert meta["step"] == 2 and meta["source"]["tag"] == "step_00000002"
    assert (out / "model.safetensors").is_file() and not list(tmp_path.glob(".cli_policy.tmp*"))
    fp32 = _consolidated(run_dir / "checkpoints" / "step_00000002")
    got = read_weights(out)
    assert got.keys() == fp32.keys() and all(torch.equal(got[k].to(fp32[k].dtype), fp32[k]) for k in fp32)
    assert load_policy(out).meta["step"] == 2

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_hf_backbone_export_writes_assets_ties_and_relocates(tiny_world_args, tmp_path):
    """A LARA on a tiny Qwen3-VL with tied embeddings and LoRA (2 ranks, ZeRO-3): the export holds the
    backbone's assets and config overrides, stores the tied matrix once, can be moved, and loads
    with DeepSpeed unimportable, predicting what the checkpoint's own model predicts."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from lavla.model.factory import build_model
    from tests.model.hf_tiny_models import write_tiny_qwen3_vl
    from lavla.model.policy_io import load_policy
    from lavla.trainer.config_io import load_config
    from lavla.trainer.export import export_policy

    qwen = write_tiny_qwen3_vl(tmp_path / "qwen", num_layers=2, tie_word_embeddings=True)
    run = tmp_path / "run"
    run_deepspeed([*tiny_world_args, f"--run.dir={run}", "--trainer.max_steps=1", "--model.backbone.kind=hf",
                   f"--model.backbone.hf.pretrained_path={qwen}", "--model.backbone.hf.image_size=32",
                   "--model.backbone.hf.tuning=lora", "--model.backbone.hf.lora_r=4"], num_ranks=2)
    first = tmp_path / "first"
    meta = export_policy(run, first)
    assert meta["overrides"]["backbone.hf.pretrained_path"] == "backbone" and meta["asset_paths"] == [
        "backbone.hf.pretrained_path"]
    assert meta["overrides"]["backbone.hf.load_weights"] is False
    assert (first / "backbone" / "config.json").is_file() and (first / "backbone" / "tokenizer.json").is_file()
    assert any(k.endswith("lm_head.base.weight") and v.endswith("embed_tokens.base.weight")
               for k, v in meta["tied"].items())  # the tied matrix is stored once
    moved = tmp_path / "moved" / "policy"
    moved.parent.mkdir()
    shutil.move(str(first), moved)  # self-contained: nothing points back at the run or the HF source

    ckpt = run / "checkpoints" / "step_00000001"
    bundle = _pipeline(ckpt)
    try:
        batch = bundle.client.next_micro_batch()
    finally:
        bundle.client.close()
    report, actions = _predict_in_fresh_process(moved, batch, tmp_path, block_deepspeed=True)
    assert report["deepspeed"] == [] and report["training"] is False

    cfg = load_config(["--config", str(ckpt / "config.yaml")])
    ref = build_model(cfg.model, cfg.data)
    ref.load_state_dict(_consolidated(ckpt), strict=True)
    ref.eval()
    want = ref.predict_action(batch, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(actions, want, rtol=1e-5, atol=1e-6)

    loaded = load_policy(moved)
    assert loaded.model_cfg.backbone.hf.pretrained_path == str(moved / "backbone")
    assert loaded.model_cfg.backbone.hf.load_weights is False
    params = dict(loaded.module.named_parameters(remove_duplicate=False))
    for alias, stored in meta["tied"].items():
        assert params[alias] is params[stored], alias  # still one tensor after loading


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("count", torch.zeros(3, dtype=torch.int64))
        self.register_buffer("total", torch.zeros(3, dtype=torch.float64))
        self.note = {"codes": [1, 2]}

    def get_extra_state(self):
        return self.note

    def set_extra_state(self, state):
        self.note = state


def test_tied_weights_buffers_and_extra_state_round_trip(tmp_path):
    from lavla.model.policy_io import load_state_dict_strict, read_weights
    from lavla.trainer.export import save_state_dict

    src = _Tied()
    with torch.no_grad():
        src.count += torch.tensor([1, 2, 3])
        src.total += 1e-12 + 2**30  # fp64-only precision
    src.note = {"codes": [4, 5, 6], "restarts": 2}
    _, aliases, extra = save_state_dict(src.state_dict(), tmp_path)
    assert len(aliases) == 1 and set(aliases.items()) <= {("head.weight", "embed.weight"), ("embed.weight", "head.weight")}
    assert list(extra) == ["_extra_state"]

    dst = _Tied()
    load_state_dict_strict(dst, read_weights(tmp_path), "test")
    assert dst.head.weight is dst.embed.weight  # still tied after loading
    assert torch.equal(dst.embed.weight, src.embed.weight)
    assert dst.count.dtype == torch.int64 and torch.equal(dst.count, src.count)
    assert dst.total.dtype == torch.float64 and torch.equal(dst.total, src.total)
    assert dst.note == {"codes": [4, 5, 6], "restarts": 2}
