import pytest
import torch

from lavla.model import attention as attn_mod
from lavla.model.attention import attention, last_backend, reference_attention, select_backend, set_attention_backend


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    set_attention_backend(None)


def _qkv(tq: int = 6, tk: int = 6):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 3, t, 8, generator=g) for t in (tq, tk, tk))


@pytest.mark.parametrize("case", ["plain", "causal", "bool_mask", "float_mask", "cross"])
def test_forced_sdpa_matches_math_reference(case):
    set_attention_backend("sdpa")
    q, k, v = _qkv(4, 7) if case == "cross" else _qkv()
    mask, causal = None, False
    if case == "causal":
        causal = True
    elif case == "bool_mask":
        mask = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1)) > 0.3
        mask[..., 0] = True  # every query keeps one key
    elif case == "float_mask":
        mask = torch.randn(2, 3, 6, 6)
    out = attention(q, k, v, mask=mask, causal=causal)
    assert last_backend() == "sdpa"
    torch.testing.assert_close(out, reference_attention(q, k, v, mask=mask, causal=causal), atol=1e-5, rtol=1e-5)


def test_cpu_dispatch_is_sdpa_and_forcing_flash_on_cpu_fails_clearly():
    q, k, v = _qkv()
    assert select_backend(q) == "sdpa"
    assert select_backend(q.bfloat16()) == "sdpa"  # not CUDA
    set_attention_backend("flash_attn_2")
    with pytest.raises(RuntimeError, match="flash_attn_2"):
        attention(q, k, v)
    with pytest.raises(ValueError):
        set_attention_backend("xformers")


def test_import_failures_are_cached():
    attn_mod._IMPORT_CACHE.clear()
    first = attn_mod._load("flash_attn_4")
    assert "flash_attn_4" in attn_mod._IMPORT_CACHE
    assert attn_mod._load("flash_attn_4") is first
    assert "sdpa" in attn_mod.available_backends()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_backend_matches_reference_on_gpu():
    q, k, v = (x.cuda().bfloat16() for x in _qkv(64, 64))
    for causal in (False, True):
        out = attention(q, k, v, causal=causal)
        torch.testing.assert_close(out.float(), reference_attention(q, k, v, causal=causal).float(), atol=2e-2, rtol=2e-2)
