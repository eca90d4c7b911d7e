# syntax=docker/dockerfile:1
# Graftwork's GPU image: the gpu pool's worker (transfer, fine-tuning on one or many GPUs, evaluation on the
# GPU) on a CUDA PyTorch base, with the `gpu` extra (DeepSpeed), `eval-extras` (what IFEval's and MATH's
# checkers import: the paper's suite, deployments/suites/paper.yaml) and, when asked for, flash-attention.
# The `vllm` extra is not installed: vLLM 0.22.1 pins torch 2.11.0 (this base has 2.13.0) and setuptools < 82.
# Build from the repository root:
#   docker build -f docker/gpu.Dockerfile -t graftwork-gpu:0.1.0 .
#   docker build -f docker/gpu.Dockerfile --build-arg FLASH_ATTENTION=true -t graftwork-gpu:0.1.0-fa .
# The build stage is the base's -devel image (nvcc, for DeepSpeed and flash-attention); the final stage
# its -runtime image of the same PyTorch and CUDA.

FROM pytorch/pytorch:2.13.0-cuda13.0-cudnn9-devel AS build
ARG FLASH_ATTENTION=false
ARG EXTRAS=gpu,s3,eval-extras
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY docker/constraints.txt docker/constraints.txt
# The venv sees the base's torch (system site packages) and installs everything else.
RUN python -m venv --system-site-packages /opt/venv \
    && pip install --no-build-isolation --constraint docker/constraints.txt deepspeed==0.19.8
RUN if [ "$FLASH_ATTENTION" = "true" ]; then \
        MAX_JOBS=4 pip install --no-build-isolation flash-attn==2.8.3.post2; \
    fi
COPY pyproject.toml README.md __init__.py errors.py fs.py terms.py ./
COPY flows flows
COPY operations operations
COPY tasks tasks
COPY storage storage
COPY deployments deployments
RUN pip install --constraint docker/constraints.txt ".[${EXTRAS}]"

FROM pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRAFT_APP_DIR=/app \
    GRAFT_DATA_DIR=/data \
    HF_HOME=/data/hf \
    PREFECT_HOME=/data/prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
RUN groupadd --system --gid 10001 graft \
    && useradd --system --uid 10001 --gid graft --home-dir /data --no-create-home --shell /usr/sbin/nologin graft \
    && mkdir /data \
    && chown graft:graft /data
COPY --from=build /opt/venv /opt/venv
# The package is installed in the venv: deployments name their flows by module, so no source is copied.
WORKDIR /app
USER 10001:10001
VOLUME ["/data"]
CMD ["graft", "worker", "--pool", "gpu"]
