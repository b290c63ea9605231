# The trainer: CUDA PyTorch, DeepSpeed, the [train] extra; torchrun is the entry point. From the repo root:
#   docker build -f images/trainer.Dockerfile -t ghcr.io/legistra/legistra-trainer:0.1.0 .
FROM nvcr.io/nvidia/pytorch:25.01-py3 AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY legistra ./legistra
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM nvcr.io/nvidia/pytorch:25.01-py3
ARG VERSION=0.1.0
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="legistra-trainer" \
      org.opencontainers.image.description="LoRA + DeepSpeed trainer for legal-NLP TrainingRuns" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /wheels /wheels
# The base image's torch (built for its CUDA) is kept: the [train] extra's range admits it, so pip
# installs transformers, peft, deepspeed, mlflow, ... around it without replacing it.
RUN pip install --no-cache-dir "$(ls /wheels/*.whl)[train]" && rm -rf /wheels \
 && python -c "import torch, deepspeed, peft, transformers; print(torch.__version__)" \
 && useradd --uid 1000 --create-home --shell /usr/sbin/nologin trainer || true
ENV PYTHONUNBUFFERED=1 LEGISTRA_GIT_SHA=${GIT_SHA} HF_HOME=/var/run/legistra/cache/hf \
    DS_BUILD_OPS=0 TOKENIZERS_PARALLELISM=false
USER 1000:1000
WORKDIR /home/trainer
ENTRYPOINT ["torchrun"]
CMD ["-m", "legistra.trainer", "--help"]
