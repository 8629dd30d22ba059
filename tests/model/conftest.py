"""Puts this directory on sys.path so tests can import ``model_test_utils`` whatever pytest's import mode."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_test_utils import random_batch  # noqa: E402


@pytest.fixture
def make_batch() -> Callable[..., dict[str, Any]]:
    return random_batch
