"""One import namespace and locked dependencies.

The project installs only ``lavla``: its folders (model/, trainer/, ...) map to ``lavla.<folder>``
and have no ``__init__.py``, so from the repository root they never shadow a package of the same
name (transformers imports Hugging Face's ``kernels``). Installs take every version from
``requirements.lock``, which must agree with pyproject.toml."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

FOLDERS = ("launcher", "model", "data_service", "kernels", "trainer")
DIST = "latent-vla-pretrain"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCK = REPO / "requirements.lock"
UNLOCKED_EXTRAS = {"gpu", "libero"}  # CUDA-only packages (pinned in pyproject and the image) and LIBERO's
# exact pins (`make libero` installs them --no-deps): not in the CPU lock
UNLOCKED_PACKAGES = {"torch"}  # pyproject's exact pin; left out so the lock also fits CUDA torch


def _run_from_repo_root(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_repo_root_does_not_shadow_hugging_face_kernels() -> None:
    # `python -c` puts the repository root first on sys.path, as `python -m lavla...` and pytest do.
    out = _run_from_repo_root(
        "import kernels, transformers.modeling_utils, lavla.kernels.codebook as ours\n"
        "print(kernels.__file__); print(ours.__file__)")
    theirs, ours = out.split()
    assert "site-packages" in theirs and not theirs.startswith(str(REPO) + os.sep + "kernels"), theirs
    assert Path(ours) == REPO / "kernels" / "codebook.py"


@pytest.mark.parametrize("folder", FOLDERS)
def test_project_folders_are_not_regular_packages(folder: str) -> None:
    # A regular package in the repo root would win over an installed one of the same name.
    assert not (REPO / folder / "__init__.py").exists()


def test_no_module_imports_a_bare_project_folder() -> None:
    offenders = []
    for path in REPO.rglob("*.py"):
        if any(part in {".venv", ".cache", "build", ".git"} for part in path.relative_to(REPO).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in FOLDERS]
    assert not offenders, offenders


def test_installed_distribution_has_one_top_level_name(tmp_path: Path) -> None:
    assert importlib.metadata.distribution(DIST).read_text("top_level.txt").split() == ["lavla"]
    # The file list of what a non-editable install puts in site-packages: the wheel.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"lavla", f"{DIST.replace('-', '_')}-{importlib.metadata.version(DIST)}.dist-info"}, top
    assert "lavla/__init__.py" not in names  # an implicit namespace: other distributions may add to it
    for f in ("lavla/kernels/codebook.py", "lavla/model/recipes/lara/policy.py", "lavla/model/recipes/lara/config.py", "lavla/launcher/templates/sbatch.sh",
              "lavla/trainer/loop.py", "lavla/data_service/sampling/plan.py"):
        assert f in names, f


def test_console_script_and_module_entry_points() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    assert all(target.startswith("lavla.") for target in scripts.values()), scripts
    out = _run_from_repo_root("import runpy, sys; sys.argv = ['x', '--help']\n"
                              "try:\n    runpy.run_module('lavla.launcher.hostfile', run_name='__main__')\n"
                              "except SystemExit as e:\n    assert e.code == 0, e.code\n")
    assert "--hosts" in out


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def _declared() -> list[Requirement]:
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra, specs in project["optional-dependencies"].items():
        if extra not in UNLOCKED_EXTRAS:
            reqs += [Requirement(r) for r in specs]
    return reqs


def test_lock_agrees_with_pyproject() -> None:
    pins = _locked()
    assert "make lock" in LOCK.read_text()[:400], "requirements.lock is written by `make lock`"
    problems = []
    for req in _declared():
        name = canonicalize_name(req.name)
        if name in UNLOCKED_PACKAGES:
            assert name not in pins, f"{name} must stay out of the lock"
            continue
        if name not in pins:
            problems.append(f"{req} is in pyproject.toml but not in the lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"pyproject.toml requires {req}, the lock has {name}=={pins[name]}")
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


def test_fast_moving_dependencies_have_upper_bounds() -> None:
    for req in _declared() + [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["gpu"]]:
        if canonicalize_name(req.name) in {"transformers", "peft", "ray", "deepspeed", "triton", "flash-attn-4"}:
            assert any(s.operator in {"<", "<=", "=="} for s in req.specifier), f"{req}: no upper bound"


def test_environment_was_installed_from_the_lock() -> None:
    """`make install`/`make test` install with the lock as constraints; a drifted venv shows here."""
    drifted = []
    for name, version in _locked().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an extra this environment did not install
        if installed != version:
            drifted.append(f"{name}: installed {installed}, locked {version}")
    assert not drifted, "reinstall from the lock (make install-test):\n" + "\n".join(drifted)
