"""The quantizers' lookup goes through the fused Triton kernel where it runs, with identical ids.

On CPU the lookup falls back to the PyTorch reference (``test_quantizer.py``). Under Triton's
interpreter (``TRITON_INTERPRET=1`` exported before Triton is imported, as in tests/kernels) the
same kernel runs on CPU tensors: ``test_interp_*`` checks that every quantizer kind really
launches it and picks the reference's codes; the driver test re-runs them in a child process.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lavla.model.codebook_lookup import lookup_backend, nearest_code_reference
from lavla.model.config import QuantizerConfig
from lavla.model.quantizer import build_quantizer

REPO_ROOT = Path(__file__).resolve().parents[2]
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except Exception:
    HAS_TRITON = False


@pytest.mark.skipif(not INTERPRETED, reason="needs TRITON_INTERPRET=1 at import; run by the subprocess driver below")
@pytest.mark.parametrize("kind,codebook_dim,cosine", [("st", 0, False), ("ema", 0, False), ("nsvq", 0, False), ("st", 3, True)])
def test_interp_quantizer_uses_the_kernel_with_reference_ids(kind, codebook_dim, cosine):
    from lavla.kernels import codebook as cbk

    assert cbk.KERNEL_INTERPRETED
    torch.manual_seed(0)
    q = build_quantizer(QuantizerConfig(kind=kind, num_codes=12, codebook_dim=codebook_dim, cosine=cosine,
                                        restart_from="codes"), 8).eval()
    ref = copy.deepcopy(q)
    ref.lookup_fn = nearest_code_reference
    z = torch.randn(5, 7, 8)
    assert lookup_backend(z.reshape(-1, 8), q.codes()) == "triton"
    before = cbk.triton_launch_count()
    out = q(z)
    assert cbk.triton_launch_count() == before + 1, "the Triton kernel did not launch"
    expected = ref(z)
    assert torch.equal(out.ids, expected.ids)
    torch.testing.assert_close(out.quantized, expected.quantized)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(INTERPRETED, reason="this process already runs the test_interp_* tests")
def test_interpreter_kernel_path_in_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", __file__, "-k", "test_interp_", "-q", "-p", "no:cacheprovider", "-rs"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) == 4, tail
    assert "skipped" not in summary, tail
