"""The image cannot be built here (no Docker engine): check that the Dockerfile agrees with
pyproject.toml and the launchers, and that its entrypoint behaves."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lavla.launcher.slurm import CONTAINER_WORKDIR

from .conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# The CUDA major version each pinned torch wheel on PyPI is built for (its metadata requires
# cuda-toolkit==13.0.3 for 2.13.0). A new torch pin needs a line here and maybe a new base image.
TORCH_CUDA_MAJOR = {"2.13.0": 13}
_PIN_RE = re.compile(r"[\"']?([A-Za-z0-9][A-Za-z0-9_.-]*(?:\[[^\]]*\])?)==([^\s\"']+)[\"']?")


def _instructions() -> list[str]:
    """Dockerfile instructions with line continuations joined and comments dropped."""
    lines = [x for x in DOCKERFILE.splitlines() if not x.lstrip().startswith("#")]
    return [x.strip() for x in "\n".join(lines).replace("\\\n", " ").splitlines() if x.strip()]


def _docker_pins() -> dict[str, str]:
    pins = {}
    for ins in _instructions():
        if ins.startswith("RUN") and "pip install" in ins:
            for name, version in _PIN_RE.findall(ins):
                pins[canonicalize_name(Requirement(name).name)] = version
    return pins


def _pyproject_requirements() -> dict[str, list[Requirement]]:
    project = PYPROJECT["project"]
    reqs: dict[str, list[Requirement]] = {}
    for spec in [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]:
        req = Requirement(spec)
        reqs.setdefault(canonicalize_name(req.name), []).append(req)
    return reqs


def test_every_pin_agrees_with_pyproject() -> None:
    pins, reqs = _docker_pins(), _pyproject_requirements()
    assert {"torch", "deepspeed", "ray", "flash-attn-4"} <= set(pins), pins
    for name, version in pins.items():
        assert name in reqs, f"Dockerfile pins {name}=={version}, which pyproject.toml does not depend on"
        for req in reqs[name]:
            assert req.specifier.contains(version, prereleases=True), \
                f"Dockerfile pins {name}=={version} but pyproject.toml requires {req}"


def test_pyproject_exact_pins_are_installed_at_that_version() -> None:
    pins = _docker_pins()
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        name = canonicalize_name(req.name)
        if exact and name in pins:
            assert pins[name] == exact[0], f"{name}: Dockerfile {pins[name]}, pyproject.toml {exact[0]}"


def test_base_image_cuda_matches_the_torch_wheel() -> None:
    torch = _docker_pins()["torch"]
    assert torch in TORCH_CUDA_MAJOR, f"torch {torch}: add its CUDA major version to TORCH_CUDA_MAJOR"
    image = re.search(r"^ARG CUDA_IMAGE=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert image, "the base image is chosen by ARG CUDA_IMAGE"
    m = re.match(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-(?:cudnn-)?devel-ubuntu\d+\.\d+$", image.group(1))
    assert m, f"{image.group(1)}: expected an nvidia/cuda *-devel-* tag (nvcc for DeepSpeed's JIT ops)"
    assert int(m.group(1)) == TORCH_CUDA_MAJOR[torch]
    # flash-attn-4 takes its CUDA flavour as an extra; it must be the same major version.
    assert re.search(rf"flash-attn-4\[cu{TORCH_CUDA_MAJOR[torch]}\]==", DOCKERFILE)


def test_extras_sources_and_entrypoint_exist() -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    installs = re.findall(r'pip install (?:--constraint requirements\.lock )?-e "\.\[([^\]]+)\]"', DOCKERFILE)
    assert installs, "the project itself is installed with its extras"
    wanted = set(installs[0].split(","))
    assert wanted <= extras and {"gpu", "ray"} <= wanted
    for ins in _instructions():
        if ins.startswith("COPY"):
            for src in ins.split()[1:-1]:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    assert re.search(rf"^WORKDIR {re.escape(CONTAINER_WORKDIR)}$", DOCKERFILE, re.MULTILINE), \
        "launcher.slurm runs pyxis steps in CONTAINER_WORKDIR: keep it equal to the image's WORKDIR"
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/lavla-entrypoint"]' in DOCKERFILE
    assert os.access(REPO / "docker" / "entrypoint.sh", os.X_OK)


def test_every_install_but_torch_takes_the_lock() -> None:
    assert "COPY requirements.lock ./" in DOCKERFILE
    for ins in _instructions():
        if ins.startswith("RUN") and "pip install" in ins:
            for cmd in ins.split("&&"):
                if "pip install" in cmd and "--upgrade pip" not in cmd and '"torch==' not in cmd:
                    assert "--constraint requirements.lock" in cmd, f"not installed from the lock: {cmd.strip()}"


def test_entrypoint_sources_site_env_and_execs(tmp_path) -> None:
    entry = str(REPO / "docker" / "entrypoint.sh")
    env_file = tmp_path / "site.sh"
    env_file.write_text("export NCCL_SOCKET_IFNAME=ib0\n")
    env = {**os.environ, "LAVLA_ENV_FILE": str(env_file)}
    out = subprocess.run([entry, "bash", "-c", 'echo "$NCCL_SOCKET_IFNAME $$"; exit 7'], env=env,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 7 and out.stdout.split()[0] == "ib0"  # exit code of the command, not ours
    missing = subprocess.run([entry, "true"], env={**env, "LAVLA_ENV_FILE": str(tmp_path / "nope")},
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert subprocess.run([entry], capture_output=True, text=True, check=False).returncode == 2


@pytest.mark.skipif(not os.environ.get("LAVLA_DOCKER_BUILD"), reason="set LAVLA_DOCKER_BUILD=1 on a machine with Docker")
def test_image_builds() -> None:
    subprocess.run(["docker", "build", "-t", "lavla:test", str(REPO)], check=True)
    out = subprocess.run(["docker", "run", "--rm", "lavla:test", "python", "-c",
                          "import torch, deepspeed, ray.train, flash_attn.cute; print(torch.__version__)"],
                         check=True, capture_output=True, text=True)
    assert out.stdout.strip().startswith(_docker_pins()["torch"])
