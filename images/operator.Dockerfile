# syntax=docker/dockerfile:1
# The mlrollout operator: `kopf run -m mlrollout.operator.main`.
#   docker build -f images/operator.Dockerfile -t ghcr.io/mlrollout/operator:0.1.0 .
# Only what the operator imports is installed (no onnxruntime, BentoML or scikit-learn):
# tests/unit/test_manifests_images.py checks this list against the operator's imports and
# against pyproject.toml. Pin the base by digest in your registry mirror for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A venv without pip: the build stage's pip installs into it, so the final image carries
# neither pip nor the build backend.
RUN python -m venv --without-pip /opt/venv
# Dependencies before sources, so code changes reuse this layer.
RUN pip --python /opt/venv/bin/python install \
      "kopf>=1.37" \
      "numpy>=1.26" \
      "kubernetes>=29" \
      "pydantic>=2.6" \
      "pyyaml>=6" \
      "prometheus-client>=0.20" \
      "aiohttp>=3.9"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY services ./services
RUN pip --python /opt/venv/bin/python install --no-deps --no-compile . \
    && /opt/venv/bin/python -c "import mlrollout.operator.main"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mlrollout-operator" \
      org.opencontainers.image.description="Kubernetes operator for progressive delivery of ML models" \
      org.opencontainers.image.source="https://github.com/mlrollout/mlrollout" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
# Numeric user, so `runAsNonRoot` can verify it without a passwd lookup.
USER 65532:65532
EXPOSE 8000 8080
ENTRYPOINT ["kopf"]
CMD ["run", "--module=mlrollout.operator.main", "--standalone", "--all-namespaces", \
     "--liveness=http://0.0.0.0:8080/healthz"]
