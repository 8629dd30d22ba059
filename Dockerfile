# GPU image for clusters (SLURM via enroot/pyxis or Apptainer, Ray on Kubernetes).
# Versions match pyproject.toml: torch 2.13.0 (the PyPI wheel bundles its CUDA runtime),
# deepspeed 0.19.8, draccus 0.11.6, plus the gpu/rlds/video/ray/hf/wandb extras.
FROM nvidia/cuda:12.9.1-cudnn-devel-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    # DeepSpeed JIT-builds ops on first use; pin the arch list so builds are reproducible.
    TORCH_CUDA_ARCH_LIST="8.0;9.0" \
    PYTORCH_ALLOC_CONF=expandable_segments:True

RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev git build-essential ninja-build pdsh openssh-client \
        libibverbs1 ibverbs-providers && \
    rm -rf /var/lib/apt/lists/* && \
    python3 -m venv $VIRTUAL_ENV

WORKDIR /workspace/latent-vla
# Dependencies first (cached layer), then the source.
COPY pyproject.toml README.md ./
RUN pip install --upgrade pip && pip install "torch==2.13.0"
COPY launcher launcher
COPY model model
COPY data_service data_service
COPY kernels kernels
COPY trainer trainer
COPY configs configs
RUN pip install -e ".[gpu,rlds,video,ray,hf,wandb]"

# Both launchers call the same training entry:
#   deepspeed --hostfile /job/hostfile launcher/pretrain.py --config configs/<recipe>.yaml
#   python -m launcher.ray_job --config configs/<recipe>.yaml --address <ray head>
CMD ["python", "launcher/pretrain.py", "--help"]
