"""Parity tests for kernels/codebook.py (nearest-code lookup and straight-through VQ).

The Triton kernel runs on CPU under Triton's interpreter. Triton reads ``TRITON_INTERPRET`` when a
``@triton.jit`` function is defined (for our kernel and for Triton's own ``tl.zeros``/``tl.min``), so
it must be exported before ``kernels.codebook`` is imported; setting it from a fixture is too late,
and setting it at module level would leak into GPU tests collected in the same session. Hence:

* the ``test_interp_*`` tests run only in a process where the kernel is interpreted;
* ``test_interpreter_suite_in_subprocess`` re-runs them in a child pytest with
  ``TRITON_INTERPRET=1`` and requires them all to pass, none skipped (a CI job that exports the
  variable itself runs them directly and skips the driver);
* ``_run_triton`` asserts the interpreted kernel really launched (launch counter), so a silent
  fallback to the reference cannot pass.

Sizes stay at a few dozen rows/codes: the interpreter executes every tile in numpy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lavla.kernels import codebook as cbk

REPO_ROOT = Path(__file__).resolve().parents[2]

needs_triton = pytest.mark.skipif(not cbk.HAS_TRITON, reason="triton is not installed")
interp = pytest.mark.skipif(
    not cbk.KERNEL_INTERPRETED,
    reason="needs TRITON_INTERPRET=1 at import; run by test_interpreter_suite_in_subprocess",
)


def _run_triton(z, codebook, **kw):
    """Run the fused kernel under the interpreter and prove it was the kernel that ran."""
    assert cbk.KERNEL_INTERPRETED
    before = cbk.triton_launch_count()
    out = cbk.nearest_code_triton(z, codebook, **kw)
    assert cbk.triton_launch_count() == before + 1, "the Triton kernel did not launch"
    return out


def _bruteforce_ids(z, codebook):
    """Independent fp64 argmin of the full squared distance (ties -> lowest index)."""
    d = ((z.double()[:, None, :] - codebook.double()[None, :, :]) ** 2).sum(-1)
    return d.argmin(dim=1)


def _separated(n, k, d, seed=0, noise=0.05):
    """Rows that sit near a random code: unambiguous nearest codes (no near-ties)."""
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(k, d, generator=g)
    pick = torch.randint(0, k, (n,), generator=g)
    z = codebook[pick] + noise * torch.randn(n, d, generator=g)
    return z, codebook


def _assert_same(res, ref, *, err_rtol=1e-5, err_atol=1e-5):
    assert res.ids.dtype == torch.int64 and res.sq_err.dtype == torch.float32
    assert res.quantized.dtype == ref.quantized.dtype
    agree = (res.ids == ref.ids).float().mean().item()
    assert agree == 1.0, f"index agreement {agree:.4f}"
    torch.testing.assert_close(res.quantized, ref.quantized, rtol=0, atol=0)
    torch.testing.assert_close(res.sq_err, ref.sq_err, rtol=err_rtol, atol=err_atol)


# ----------------------------------------------------------------------------- reference / naive


@pytest.mark.parametrize("n,k,d", [(37, 13, 20), (64, 40, 3), (1, 1, 1), (50, 7, 33)])
def test_reference_matches_fp64_bruteforce(n, k, d):
    z, codebook = _separated(n, k, d, seed=n + k + d)
    ref = cbk.nearest_code_reference(z, codebook)
    assert torch.equal(ref.ids, _bruteforce_ids(z, codebook))
    assert torch.equal(ref.quantized, codebook[ref.ids])
    expected_err = ((z.double() - codebook[ref.ids].double()) ** 2).sum(-1).float()
    torch.testing.assert_close(ref.sq_err, expected_err, rtol=1e-5, atol=1e-6)


def test_reference_chunking_is_invisible():
    g = torch.Generator().manual_seed(1)
    z, codebook = torch.randn(101, 16, generator=g), torch.randn(29, 16, generator=g)
    full = cbk.nearest_code_reference(z, codebook)
    for max_block_elems in (1, 29, 30, 29 * 7 + 3):  # 1 row per chunk ... ragged last chunk
        part = cbk.nearest_code_reference(z, codebook, max_block_elems=max_block_elems)
        assert torch.equal(part.ids, full.ids)
        assert torch.equal(part.quantized, full.quantized)
        assert torch.equal(part.sq_err, full.sq_err)


def test_reference_vs_naive():
    z, codebook = _separated(200, 50, 24, seed=3)
    _assert_same(cbk.nearest_code_naive(z, codebook), cbk.nearest_code_reference(z, codebook))
    # Unstructured data: cdist's different formula may only flip genuine near-ties.
    g = torch.Generator().manual_seed(4)
    z, codebook = torch.randn(300, 24, generator=g), torch.randn(64, 24, generator=g)
    naive, ref = cbk.nearest_code_naive(z, codebook), cbk.nearest_code_reference(z, codebook)
    assert (naive.ids == ref.ids).float().mean().item() >= 0.99
    torch.testing.assert_close(naive.sq_err.min(), ref.sq_err.min(), rtol=1e-4, atol=1e-5)


def test_dtypes_of_outputs_follow_codebook():
    z, codebook = _separated(10, 5, 8)
    res = cbk.nearest_code_reference(z.bfloat16(), codebook.half())
    assert res.quantized.dtype == torch.float16
    assert res.sq_err.dtype == torch.float32 and res.ids.dtype == torch.int64


def _tie_case():
    """Integer-valued data: every score is exact in fp32, so ties are exact ties.

    Duplicate codes: 2 == 9 (same 16-wide tile) and 5 == 21 (different tiles of the interpreter's
    BLOCK_K=16). Equidistant codes: z exactly halfway between codes 3 and 20.
    """
    g = torch.Generator().manual_seed(7)
    k, d = 24, 20
    codebook = torch.randint(-8, 9, (k, d), generator=g).float() * 2.0  # even -> exact midpoints
    codebook[9] = codebook[2]
    codebook[21] = codebook[5]
    z = torch.stack(
        [
            codebook[9],  # duplicate pair (2, 9): expect 2
            codebook[2],
            codebook[21],  # duplicate pair across tiles (5, 21): expect 5
            (codebook[3] + codebook[20]) / 2,  # equidistant from 3 and 20 (and maybe others)
            codebook[20],
            codebook[0],
        ]
    )
    return z, codebook


def test_ties_resolve_to_lowest_index_reference():
    z, codebook = _tie_case()
    ref = cbk.nearest_code_reference(z, codebook)
    assert torch.equal(ref.ids, _bruteforce_ids(z, codebook))  # fp64 argmin: first minimum
    assert ref.ids[:3].tolist() == [2, 2, 5]
    assert ref.ids[3].item() <= 3
    assert ref.ids[4:].tolist() == [20, 0]


def test_input_validation():
    with pytest.raises(ValueError, match="dimension mismatch"):
        cbk.nearest_code_reference(torch.zeros(3, 4), torch.zeros(5, 6))
    with pytest.raises(ValueError, match="expects z"):
        cbk.nearest_code_reference(torch.zeros(2, 3, 4), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="empty"):
        cbk.nearest_code_reference(torch.zeros(3, 4), torch.zeros(0, 4))
    with pytest.raises(TypeError, match="floating"):
        cbk.nearest_code_reference(torch.zeros(3, 4, dtype=torch.int32), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="unknown backend"):
        cbk.nearest_code(torch.zeros(3, 4), torch.zeros(5, 4), backend="fast")


def test_empty_rows():
    res = cbk.nearest_code_reference(torch.zeros(0, 4), torch.randn(3, 4))
    assert res.ids.shape == (0,) and res.quantized.shape == (0, 4) and res.sq_err.shape == (0,)


@pytest.mark.skipif(cbk.KERNEL_INTERPRETED, reason="CPU tensors go to the interpreted kernel here")
def test_cpu_dispatch_uses_reference_without_interpreter():
    z, codebook = _separated(20, 6, 5)
    assert cbk.resolve_backend(z, codebook) == "reference"
    before = cbk.triton_launch_count()
    _assert_same(cbk.nearest_code(z, codebook), cbk.nearest_code_reference(z, codebook))
    assert cbk.triton_launch_count() == before


# ----------------------------------------------------------------------------- Triton (interpreter)


@pytest.mark.parametrize(
    "n,k,d",
    [(37, 13, 20), (16, 16, 16), (33, 40, 70), (50, 7, 3), (1, 1, 1), (20, 33, 17)],
)
@interp
def test_interp_fp32_parity(n, k, d):
    z, codebook = _separated(n, k, d, seed=11 * n + k)
    _assert_same(_run_triton(z, codebook), cbk.nearest_code_reference(z, codebook))


@interp
def test_interp_unstructured_fp32():
    g = torch.Generator().manual_seed(5)
    z, codebook = torch.randn(45, 24, generator=g), torch.randn(37, 24, generator=g)
    _assert_same(_run_triton(z, codebook), cbk.nearest_code_reference(z, codebook))


@interp
def test_interp_exact_ties():
    z, codebook = _tie_case()
    res = _run_triton(z, codebook)
    ref = cbk.nearest_code_reference(z, codebook)
    _assert_same(res, ref, err_rtol=0, err_atol=0)  # integer data: sq_err is exact too
    assert res.ids[:3].tolist() == [2, 2, 5]


@interp
def test_interp_all_codes_identical():
    codebook = torch.ones(40, 8)  # three K tiles of equal scores: the answer is code 0
    z = torch.randn(21, 8)
    res = _run_triton(z, codebook)
    assert res.ids.eq(0).all()


@interp
def test_interp_strided_and_precomputed_norms():
    z_full, cb_full = _separated(30, 12, 2 * 19, seed=9)
    z = z_full[:, ::2]  # non-contiguous rows
    codebook = cb_full[:, ::2].t().contiguous().t()  # column-major codebook
    norms = cbk.codebook_sq_norms(codebook)
    res = _run_triton(z, codebook, code_sq_norms=norms)
    _assert_same(res, cbk.nearest_code_reference(z, codebook))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@interp
def test_interp_half_inputs(dtype):
    z, codebook = _separated(37, 13, 20, seed=2)
    z, codebook = z.to(dtype), codebook.to(dtype)
    res = _run_triton(z, codebook)
    assert res.quantized.dtype == dtype
    # Reference on the same (upcast) values: products are exact in fp32, only summation order differs.
    _assert_same(res, cbk.nearest_code_reference(z, codebook))


@interp
def test_interp_mixed_dtypes():
    z, codebook = _separated(25, 9, 12, seed=6)
    res = _run_triton(z.bfloat16(), codebook)  # bf16 activations, fp32 codebook -> fp32 dots
    assert res.quantized.dtype == torch.float32
    _assert_same(res, cbk.nearest_code_reference(z.bfloat16(), codebook))


@interp
def test_interp_empty_rows():
    res = cbk.nearest_code_triton(torch.zeros(0, 5), torch.randn(3, 5))
    assert res.ids.shape == (0,) and res.quantized.shape == (0, 5)


@interp
def test_interp_dispatch_uses_triton():
    z, codebook = _separated(19, 6, 10)
    assert cbk.resolve_backend(z, codebook) == "triton"
    before = cbk.triton_launch_count()
    res = cbk.nearest_code(z, codebook)
    assert cbk.triton_launch_count() == before + 1
    _assert_same(res, cbk.nearest_code_reference(z, codebook))


@interp
def test_interp_kernel_is_interpreted():
    from triton.runtime.interpreter import InterpretedFunction

    assert isinstance(cbk._nearest_code_kernel, InterpretedFunction)
    z, codebook = _separated(5, 3, 4)
    assert cbk.resolve_backend(z, codebook) == "triton"


@needs_triton
@pytest.mark.skipif(cbk.KERNEL_INTERPRETED, reason="this process already runs the test_interp_* tests")
def test_interpreter_suite_in_subprocess():
    """Run every test_interp_* test in a child pytest with TRITON_INTERPRET=1 exported first."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", __file__, "-k", "test_interp_", "-q", "-p", "no:cacheprovider", "-rs"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 15, tail
    assert "skipped" not in summary and "deselected" in summary, tail


# ----------------------------------------------------------------------------- straight-through


def _plain_vq(z, codebook, beta):
    """Plain-PyTorch VQ-VAE losses with the usual detach tricks (autograd does the backward)."""
    flat = z.reshape(-1, z.shape[-1])
    ids = cbk.nearest_code_reference(flat, codebook).ids
    q = codebook[ids].reshape(z.shape)
    codebook_loss = torch.nn.functional.mse_loss(q, z.detach())
    commitment = torch.nn.functional.mse_loss(z, q.detach())
    out = z + (q - z).detach()
    return out, ids.reshape(z.shape[:-1]), codebook_loss + beta * commitment, codebook_loss, commitment


def _grads(fn, z0, cb0, beta, g_out, w_loss, cb_requires_grad=True):
    z = z0.clone().requires_grad_(True)
    codebook = cb0.clone().requires_grad_(cb_requires_grad)
    out, ids, loss, cb_loss, commit = fn(z, codebook, beta)
    ((out * g_out).sum() + w_loss * loss).backward()
    return out.detach(), ids, loss.detach(), z.grad, codebook.grad, cb_loss.detach(), commit.detach()


def _ste(backend):
    return lambda z, codebook, beta: tuple(cbk.quantize_straight_through(z, codebook, beta, backend=backend))


def _check_ste_parity(backend, shape=(3, 7, 10), k=6, beta=0.25):
    g = torch.Generator().manual_seed(13)
    z0 = torch.randn(*shape, generator=g)
    cb0 = torch.randn(k, shape[-1], generator=g)  # k < rows: codes are hit several times
    g_out = torch.randn(*shape, generator=g)
    got = _grads(_ste(backend), z0, cb0, beta, g_out, 3.0)
    want = _grads(_plain_vq, z0, cb0, beta, g_out, 3.0)
    names = ["quantized", "ids", "loss", "z.grad", "codebook.grad", "codebook_loss", "commitment"]
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    assert got[1].shape == shape[:-1]
    unused = torch.ones(k, dtype=torch.bool)
    unused[got[1].flatten()] = False
    assert got[4][unused].abs().sum() == 0  # codes nobody picked get no gradient


def test_ste_gradient_parity_reference():
    _check_ste_parity("reference")


@interp
def test_interp_ste_gradient_parity():
    before = cbk.triton_launch_count()
    _check_ste_parity("triton", shape=(2, 9, 12), k=5, beta=0.5)
    assert cbk.triton_launch_count() == before + 1


def test_ste_frozen_codebook_and_loss_only():
    """EMA-style codebook (no grad) and a loss-only backward (quantized unused)."""
    g = torch.Generator().manual_seed(21)
    z = torch.randn(4, 6, generator=g, requires_grad=True)
    codebook = torch.randn(3, 6, generator=g)
    res = cbk.quantize_straight_through(z, codebook, beta=0.5, backend="reference")
    res.commitment_loss.backward()
    q = codebook[res.ids]
    torch.testing.assert_close(z.grad, 2 * (z.detach() - q) / z.numel())


# ----------------------------------------------------------------------------- GPU


def test_kernel_compiles_for_sm90_without_a_gpu():
    """Ahead-of-time compile for Hopper (needs only Triton's bundled ptxas): catches lowering bugs."""
    if not cbk.HAS_TRITON or cbk.KERNEL_INTERPRETED:
        pytest.skip("needs triton with the compiled (non-interpreted) kernel")
    import triton
    import triton.language as tl

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:  # pragma: no cover - Triton layout changed
        pytest.skip(f"triton compiler API unavailable: {exc}")
    kern = cbk._get_kernel(False).fn  # the JITFunction inside the autotuner
    ptr = {"z_ptr": "*bf16", "cb_ptr": "*bf16", "cb_norm_ptr": "*fp32", "ids_ptr": "*i64", "q_ptr": "*bf16"}
    sig = {name: ptr.get(name, "i32") for name in kern.arg_names}
    sig["err_ptr"] = "*fp32"
    consts = {"BLOCK_N": 64, "BLOCK_K": 32, "BLOCK_D": 32, "DOT_DTYPE": tl.bfloat16, "INPUT_PRECISION": "tf32"}
    sig.update({name: "constexpr" for name in consts})
    src = ASTSource(fn=kern, signature=sig, constexprs={(kern.arg_names.index(n),): v for n, v in consts.items()})
    try:
        compiled = triton.compile(
            src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 2, "enable_fp_fusion": True}
        )
    except Exception as exc:  # missing ptxas etc. is an environment problem, not a kernel bug
        if "ptxas" in str(exc).lower():
            pytest.skip(f"no ptxas: {exc}")
        raise
    assert "mma" in compiled.asm["ptx"]  # bf16 scores go through tensor cores


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(not cbk.HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(cbk.KERNEL_INTERPRETED, reason="TRITON_INTERPRET=1: the compiled kernel is not in use")
def test_gpu_bf16_index_agreement():
    g = torch.Generator(device="cuda").manual_seed(0)
    n, k, d = 1 << 16, 1024, 128
    z32 = torch.randn(n, d, device="cuda", generator=g)
    cb32 = torch.randn(k, d, device="cuda", generator=g)
    z, codebook = z32.bfloat16(), cb32.bfloat16()
    assert cbk.resolve_backend(z, codebook) == "triton"
    before = cbk.triton_launch_count()
    res = cbk.nearest_code(z, codebook)
    torch.cuda.synchronize()
    assert cbk.triton_launch_count() == before + 1
    ref = cbk.nearest_code_reference(z, codebook)  # fp32 reference on the same bf16 values
    agree = (res.ids == ref.ids).float().mean().item()
    assert agree >= 0.999, f"bf16 kernel vs fp32 reference index agreement {agree:.5f}"
    same = res.ids == ref.ids
    assert torch.equal(res.quantized[same], ref.quantized[same])
    torch.testing.assert_close(res.sq_err[same], ref.sq_err[same], rtol=1e-4, atol=1e-3)
    # Informational: agreement with fp32 lookups on the un-rounded fp32 data.
    agree32 = (res.ids == cbk.nearest_code_reference(z32, cb32).ids).float().mean().item()
    print(f"bf16 kernel vs fp32 reference (same values) {agree:.5f}; vs unrounded fp32 data {agree32:.5f}")

    # fp32 inputs: IEEE dots, agreement only limited by summation order on genuine near-ties.
    res32 = cbk.nearest_code(z32[:8192], cb32)
    ref32 = cbk.nearest_code_reference(z32[:8192], cb32)
    assert (res32.ids == ref32.ids).float().mean().item() >= 0.9999

    # Odd shapes and exact ties on the compiled path.
    zt, ct = _tie_case()
    tie = cbk.nearest_code(zt.cuda(), ct.cuda())
    assert tie.ids[:3].tolist() == [2, 2, 5]
    zo, co = _separated(37, 13, 20)
    _assert_same(cbk.nearest_code(zo.cuda(), co.cuda()), cbk.nearest_code_reference(zo.cuda(), co.cuda()))
