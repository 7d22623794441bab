# syntax=docker/dockerfile:1
# mlrollout serving image: the model server (`mlrollout serve URI`) and the router
# (`mlrollout router --configmap NS/NAME`). No model is baked in: the server downloads the
# artifact named in the ModelDeployment when it starts.
#   docker build -f images/serving.Dockerfile -t ghcr.io/mlrollout/serving:0.1.0 .
# Only serving dependencies are installed (no kopf, scikit-learn, skl2onnx or matplotlib):
# tests/unit/test_manifests_images.py checks this list against the serving modules' imports.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv --without-pip /opt/venv
RUN pip --python /opt/venv/bin/python install \
      "bentoml>=1.4,<1.5" \
      "onnxruntime>=1.17" \
      "numpy>=1.26" \
      "scipy>=1.11" \
      "prometheus-client>=0.20" \
      "aiohttp>=3.9" \
      "uvloop>=0.19" \
      "httptools>=0.6" \
      "pydantic>=2.6" \
      "pyyaml>=6"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY services ./services
RUN pip --python /opt/venv/bin/python install --no-deps --no-compile . \
    && /opt/venv/bin/python -c "import mlrollout.services.server.service, mlrollout.services.router.server"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mlrollout-serving" \
      org.opencontainers.image.description="mlrollout model server (BentoML + onnxruntime) and router" \
      org.opencontainers.image.source="https://github.com/mlrollout/mlrollout" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
# The pod runs with a read-only root filesystem; the operator mounts writable emptyDirs on
# /tmp (HOME, BentoML's home) and /var/cache/mlrollout (downloaded models).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    BENTOML_HOME=/tmp/bentoml \
    MLROLLOUT_CACHE=/var/cache/mlrollout
USER 65532:65532
EXPOSE 8080
# No ENTRYPOINT: the operator's pods pass the whole command line (`mlrollout serve ...`).
CMD ["mlrollout", "--help"]
