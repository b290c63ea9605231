# The trainer: Python, torch, DeepSpeed and the [train] extra; torchrun is the entry point. `make images` builds it;
# by hand, from the repository root:
#   docker build -f images/trainer.Dockerfile --build-arg GIT_SHA=$(git rev-parse --short HEAD) \
#     -t ghcr.io/legistra/legistra-trainer:0.1.0 .
# torch comes from the package index: its Linux wheels carry the CUDA runtime, cuDNN and NCCL, and the node's
# driver comes from the NVIDIA container toolkit (docs/deploy.md says why this base). Wheels put in images/wheels
# win over the index: `python images/build.py --torch cpu` puts this machine's CPU torch there, and a DeepSpeed
# wheel built against it, for the image tests.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY legistra ./legistra
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
COPY --from=build /wheels /wheels
COPY constraints.txt /wheels/constraints.txt
COPY images/wheels /wheels/local
# torch first, so that DeepSpeed (an sdist on the index, whose build imports torch) builds against it rather than in
# an isolated environment that would download another torch. The constraints pin what `make test` pins. Each step
# fails the build; the image's user owns its home and nothing else is writable at run time (read-only root: the
# pod mounts /var/run/legistra, /tmp and /dev/shm).
RUN set -eux; \
    export DS_BUILD_OPS=0; \
    pip install --no-cache-dir --find-links /wheels/local -c /wheels/constraints.txt torch; \
    pip install --no-cache-dir --no-build-isolation --find-links /wheels/local -c /wheels/constraints.txt \
        "$(ls /wheels/legistra_train-*.whl)[train]"; \
    rm -rf /wheels; \
    python -c "import torch, deepspeed, peft, transformers; print('torch', torch.__version__)"; \
    useradd --uid 1000 --create-home --home-dir /home/trainer --shell /usr/sbin/nologin trainer; \
    test "$(stat -c %u /home/trainer)" = 1000; \
    legistra --version
# After the install, so that a new commit rebuilds only the layers below.
ARG VERSION=0.1.0
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="legistra-trainer" \
      org.opencontainers.image.description="LoRA + DeepSpeed trainer for legal-NLP TrainingRuns" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://git.example.com/platform/legistra-train"
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 LEGISTRA_GIT_SHA=${GIT_SHA} \
    HF_HOME=/var/run/legistra/cache/hf MPLCONFIGDIR=/tmp/matplotlib \
    DS_BUILD_OPS=0 TOKENIZERS_PARALLELISM=false
USER 1000:1000
WORKDIR /home/trainer
ENTRYPOINT ["torchrun"]
CMD ["-m", "legistra.trainer", "--help"]
