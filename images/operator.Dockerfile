# The operator: slim Python, no torch, non-root. Build from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/legistra/legistra-operator:0.1.0 .
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY legistra ./legistra
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
ARG VERSION=0.1.0
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="legistra-operator" \
      org.opencontainers.image.description="Kubernetes operator: TrainingRun -> Kubeflow PyTorchJob" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://git.example.com/platform/legistra-train"
COPY --from=build /wheels /wheels
# The core distribution only: kopf, pydantic, boto3, prometheus-client — no [train] extra.
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin legistra
ENV PYTHONUNBUFFERED=1 LEGISTRA_GIT_SHA=${GIT_SHA}
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["legistra"]
CMD ["operator", "--all-namespaces"]
