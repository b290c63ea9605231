# Everything goes through the virtualenv at .venv/, created on first use from pyproject.toml.
# torch is pinned by constraints.txt to the CPU build that lies on the dev/CI machines.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Test-only: Argo CD / Flux object schemas (npm packages generated from their released CRDs).
GITOPS := tests/gitops
GITOPS_STAMP := $(GITOPS)/node_modules/.installed-stamp
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test lint bench clean crds gpu-kit images test-images

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP)

$(GITOPS_STAMP): $(GITOPS)/package.json $(GITOPS)/package-lock.json
	npm ci --prefix $(GITOPS) --no-audit --no-fund --loglevel=error
	touch $(GITOPS_STAMP)

# The main job: train the risk-classification example on this machine with real MiniLM weights,
# tracked in a local MLflow store and registered in a local registry under .legistra/demo.
demo: install
	HF_HUB_OFFLINE=1 $(BIN)/legistra --state-dir .legistra/demo train examples/risk-classification.yaml --fresh

lint: install
	$(BIN)/ruff check legistra tests benchmarks examples images kit
	$(BIN)/mypy
	$(BIN)/mypy images/build.py

# Two workers (CI has 2 cores), whole files per worker: module fixtures (API emulator, operator) start once.
# Files go out heaviest first (tests/durations.json, kit/durations.py). PYTEST_ARGS: more pytest options.
test: lint $(GITOPS_STAMP) gpu-kit
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=25 -m "not images" $(PYTEST_ARGS)

# Both images from images/*.Dockerfile with whichever engine answers (docker, podman, else buildah, installed from
# Debian when run as root); a base that cannot be pulled is built from Debian's archive under its name.
# TORCH=cpu puts this machine's CPU torch into the trainer image (tests); the default takes CUDA torch from the index.
TORCH ?= index
images: install
	$(BIN)/python images/build.py --torch $(TORCH)

# The images run as a cluster runs them: the operator on the real API server, the trainer on a short CPU training.
test-images: install
	$(BIN)/python images/build.py --torch cpu
	$(BIN)/pytest -m images --durations=10 tests/test_images.py

# The wheels the GPU machine's image lacks (benchmarks/gpu/kit.txt), for CPython 3.12, at this venv's versions.
gpu-kit: install
	$(BIN)/python -m benchmarks.gpu_kit build

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf .legistra .gpu-kit .pytest_cache .mypy_cache .ruff_cache $(GITOPS)/node_modules

crds: install
	$(BIN)/python -m legistra.api.crd
