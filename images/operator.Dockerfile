# The operator: slim Python, no torch, non-root. `make images` builds it (with a stand-in base where the registry
# is out of reach); by hand, from the repository root:
#   docker build -f images/operator.Dockerfile --build-arg GIT_SHA=$(git rev-parse --short HEAD) \
#     -t ghcr.io/legistra/legistra-operator:0.1.0 .
# The release workflow passes PYTHON_IMAGE pinned by digest.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY legistra ./legistra
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
COPY --from=build /wheels /wheels
# The core distribution only: kopf, pydantic, boto3, prometheus-client - no [train] extra. Each step fails the build.
RUN set -eux; \
    pip install --no-cache-dir /wheels/*.whl; \
    rm -rf /wheels; \
    useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin legistra; \
    legistra --version
# After the install, so that a new commit rebuilds only the layers below.
ARG VERSION=0.1.0
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="legistra-operator" \
      org.opencontainers.image.description="Kubernetes operator: TrainingRun -> Kubeflow PyTorchJob or TrainJob" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://git.example.com/platform/legistra-train"
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 LEGISTRA_GIT_SHA=${GIT_SHA}
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["legistra"]
CMD ["operator", "--all-namespaces"]
