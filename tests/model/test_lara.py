import draccus
import pytest
import torch

from lavla.data_service.config import DataConfig
from lavla.model.recipes.lam_pretrain.config import LamPretrainConfig
from lavla.model.recipes.lara.config import LaraConfig
from lavla.model.config import ModelConfig
from lavla.model.factory import build_model
from lavla.model.recipes.lam_pretrain.policy import LamPretrainPolicy
from lavla.model.recipes.lara.policy import LaraPolicy
from model_test_utils import A, N, random_batch, tiny_lam_config, tiny_lara_config, zero3_emulation


def _policy(**kw) -> LaraPolicy:
    torch.manual_seed(0)
    return LaraPolicy(tiny_lara_config(**kw))


def test_alignment_reads_block_L_minus_2_at_last_action_token():
    policy = _policy()
    depth = policy.cfg.head.depth
    seen = {}
    h1 = policy.head.dit.blocks[depth - 3].register_forward_hook(lambda m, i, o: seen.__setitem__("block", o))
    h2 = policy.align_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("proj_in", i[0]))
    policy(random_batch(4))
    h1.remove(), h2.remove()
    # hidden states = [input, block 1, ..., block L]; index -3 = output of block L-2 = blocks[L-3].
    assert torch.equal(seen["proj_in"], seen["block"][:, -1])


def test_total_loss_combines_terms_with_default_weights():
    policy = _policy()
    loss, m = policy(random_batch(4))
    assert policy.cfg.align_weight == 0.01 and policy.cfg.lam_weight == 0.01
    expected = m["loss/flow"] + 0.01 * m["loss/align"] + 0.01 * m["loss/lam"]
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(m["loss/lam"], m["loss/lam_recon"] + m["loss/vq"])
    for key in ("loss/flow", "loss/align", "loss/lam", "loss/lam_recon", "loss/vq", "lam/perplexity", "lam/active_codes"):
        assert isinstance(m[key], torch.Tensor) and m[key].dim() == 0 and not m[key].requires_grad


def test_alignment_gradient_reaches_trainable_lam():
    policy = _policy(lam_weight=0.0)  # only the alignment term can reach the LAM
    loss, _ = policy(random_batch(4))
    loss.backward()
    g = policy.lam.mformer.queries.grad
    assert g is not None and g.abs().sum() > 0
    assert all(p.grad is None or torch.all(p.grad == 0) for p in policy.lam.decoder.parameters())  # LAM loss only


@pytest.mark.parametrize("target", ["continuous", "quantized"])
def test_frozen_lam_gets_no_gradient(target):
    policy = _policy(lam_trainable=False, align_target=target)
    policy.train()
    assert not policy.lam.training
    assert not any(p.requires_grad for p in policy.lam.parameters())
    loss, m = policy(random_batch(4))
    loss.backward()
    assert all(p.grad is None for p in policy.lam.parameters())
    assert policy.align_proj.weight.grad is not None
    assert torch.equal(policy.lam.quantizer.usage_histogram(), torch.zeros(policy.cfg.lam.quantizer.num_codes))


def test_actionless_batch_still_trains_alignment_and_lam():
    policy = _policy()
    loss, m = policy(random_batch(4, has_action=[False] * 4))
    assert m["loss/flow"] == 0
    loss.backward()
    assert policy.align_proj.weight.grad.abs().sum() > 0
    assert torch.all(policy.head.action_decoder.fc2.weight.grad == 0)


def test_predict_action_shape_and_determinism():
    policy = _policy().eval()
    b = random_batch(3)
    a1 = policy.predict_action(b, generator=torch.Generator().manual_seed(0))
    a2 = policy.predict_action(b, generator=torch.Generator().manual_seed(0))
    assert a1.shape == (3, N, A) and torch.equal(a1, a2)
    assert torch.all(a1[~b["action_dim_mask"][:, None, :].expand_as(a1)] == 0)


def _loss_at_fixed_noise(policy: LaraPolicy, batch) -> float:
    state = torch.get_rng_state()
    torch.manual_seed(123)
    with torch.no_grad():
        loss = policy(batch)[0].item()
    torch.set_rng_state(state)
    return loss


def test_trains_on_a_random_batch():
    # Compared at one fixed draw of flow time/noise: the training loss redraws them every step, and
    # averages of a few such draws moved by +-15% with the seed (a 0.7 ratio passed by luck).
    policy = _policy()
    b = random_batch(8, seed=2)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=2e-3)
    before = _loss_at_fixed_noise(policy, b)
    for _ in range(30):
        loss, _ = policy(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _loss_at_fixed_noise(policy, b)
    assert after < 0.9 * before, (before, after)


def test_parameters_are_only_read_inside_their_owners_forward():
    policy = _policy()
    b = random_batch(2)
    with torch.no_grad(), zero3_emulation(policy):
        policy(b)
        policy.predict_action(b)
    lam = LamPretrainPolicy(LamPretrainConfig(lam=tiny_lam_config()))
    with torch.no_grad(), zero3_emulation(lam):
        lam(b)


def test_factory_builds_and_validates_against_data_config():
    data = DataConfig()
    model = build_model(LaraConfig(), data)
    loss, _ = model(random_batch(2, image_size=64, horizon=8, action_dim=7, proprio_dim=8, num_embodiments=4))
    assert torch.isfinite(loss)
    assert isinstance(build_model(LamPretrainConfig(), data), LamPretrainPolicy)
    with pytest.raises(ValueError, match=r"model.head.action_horizon=8 != data.action_horizon=16"):
        build_model(LaraConfig(), DataConfig(action_horizon=16))
    with pytest.raises(ValueError, match=r"model.lam.image_size=64 != data.image_size=32"):
        build_model(LamPretrainConfig(), DataConfig(image_size=32))


def test_configs_are_registered_choices():
    cfg = draccus.decode(ModelConfig, {"type": "lara", "align_weight": 0.1, "head": {"depth": 6}})
    assert isinstance(cfg, LaraConfig) and cfg.align_weight == 0.1 and cfg.head.depth == 6
    assert isinstance(draccus.decode(ModelConfig, {"type": "lam"}), LamPretrainConfig)
    with pytest.raises(ValueError, match="align_layer"):
        tiny_lara_config(align_layer=-9)
    with pytest.raises(ValueError, match="align_target"):
        tiny_lara_config(align_target="ids")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lara_on_cuda_under_bf16_autocast():
    policy = _policy().cuda()
    b = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in random_batch(4).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, m = policy(b)
    loss.backward()
    assert torch.isfinite(loss) and m["loss/vq"].dtype == torch.float32
    a = policy.eval().predict_action(b, generator=torch.Generator().manual_seed(0))
    assert a.device.type == "cuda" and a.shape == (4, N, A)
