# GPU training image, one for every launcher:
#   SLURM + pyxis/enroot:  python -m lavla.launcher.slurm ... --container-image <this image>
#                          (srun runs each step in the image; the code is at /workspace/latent-vla)
#   Ray:                   docker run --gpus all --network host --shm-size 32g <image> ray start --head --block
#                          then: python -m lavla.launcher.ray_job --address <head>:6379 ...
#   one node:              docker run --gpus all --shm-size 32g <image> \
#                              deepspeed launcher/pretrain.py --config configs/quickstart.yaml
#
# Versions are pinned to pyproject.toml (tests/launcher/test_dockerfile.py checks it). The PyPI
# torch 2.13.0 wheel is built against CUDA 13.0 and brings its CUDA runtime, cuDNN and NCCL as
# wheels; the devel base adds nvcc of the same major version for DeepSpeed's JIT-built ops.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    # DeepSpeed JIT-builds its ops on first use: A100, H100, B200.
    TORCH_CUDA_ARCH_LIST="8.0;9.0;10.0" \
    PYTORCH_ALLOC_CONF=expandable_segments:True \
    RAY_USAGE_STATS_ENABLED=0

# tini reaps zombies and forwards signals when the image runs as PID 1 (docker, Kubernetes);
# pdsh + ssh serve DeepSpeed's default multi-node launcher outside SLURM; ibverbs for NCCL over IB.
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev git build-essential ninja-build tini pdsh openssh-client \
        libibverbs1 ibverbs-providers procps iproute2 && \
    rm -rf /var/lib/apt/lists/* && \
    python3 -m venv $VIRTUAL_ENV && \
    pip install --upgrade pip

# Heavy pinned dependencies first: this layer survives source changes. torch goes first so no
# later resolver picks another build; every other version comes from the lock (make lock).
WORKDIR /workspace/latent-vla
COPY requirements.lock ./
RUN pip install "torch==2.13.0" && \
    pip install --constraint requirements.lock "deepspeed==0.19.8" "ray[default,train]==2.60.0" \
        "flash-attn-4[cu13]==4.0.0b36"

COPY pyproject.toml README.md ./
COPY launcher launcher
COPY model model
COPY data_service data_service
COPY kernels kernels
COPY trainer trainer
COPY configs configs
# No rlds extra: TensorFlow is the tests' reference reader, never on the training path.
RUN pip install --constraint requirements.lock -e ".[gpu,video,ray,hf,wandb,tp]" && \
    python -c "import lavla.trainer.loop, lavla.model.factory"

COPY docker/entrypoint.sh /usr/local/bin/lavla-entrypoint
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/lavla-entrypoint"]
CMD ["lavla-pretrain", "--help"]
