# syntax=docker/dockerfile:1
# Graftwork's CPU image: the `graft` CLI, the webhook receiver (the default command), watchers and the cpu
# pool's worker; `prefect server start` in it is the Prefect server. Build from the repository root:
#   docker build -f docker/app.Dockerfile -t graftwork-app:0.1.0 .
# EXTRAS adds the project's extras, e.g. --build-arg EXTRAS=s3,kubernetes for a Kubernetes worker.

FROM python:3.11.7-slim-bookworm AS build
ARG EXTRAS=s3
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
    && pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY docker/constraints.txt docker/constraints.txt
COPY pyproject.toml README.md __init__.py errors.py fs.py terms.py ./
COPY flows flows
COPY operations operations
COPY tasks tasks
COPY storage storage
COPY deployments deployments
RUN pip install --constraint docker/constraints.txt ".[${EXTRAS}]"

FROM python:3.11.7-slim-bookworm
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
EXPOSE 8000 4200
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["graft", "webhook", "--host", "0.0.0.0", "--port", "8000"]
