"""Runs test_tfds_compat.py in a child process (TensorFlow must not share a process with torch
training) and requires every comparison against TensorFlow Datasets to pass, none skipped."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None,
                    reason="needs the [rlds] extra (tensorflow-datasets)")
def test_tfds_compat_in_child_process():
    target = Path(__file__).with_name("test_tfds_compat.py")
    env = {**os.environ, "LAVLA_TF_SUBPROCESS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(target)],
                          cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert " passed" in out and "skipped" not in out, out[-5000:]
