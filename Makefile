# Two entry points for a newcomer: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need: torch first (the pinned CPU wheel; set TORCH_SPEC for
# another build), then this package with its pipeline, dev, bench and cyclers extras.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.msenc-installed
DEMO_DIR ?= demo-output

.PHONY: install test test-fast demo image image-cuda image-local clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[pipeline,dev,bench,cyclers]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything but the tests marked slow (multi-process training, whole pipelines, benchmarks) or container
# (they build the image): a few minutes on 2 cores.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not container" $(PYTEST_ARGS)

# The whole pipeline with kfp.local on the embedded demo data; every artifact under $(DEMO_DIR)/pipeline_root,
# the report at $(DEMO_DIR)/report.html (printed at the end).
demo: $(STAMP)
	$(VENV)/bin/msenc pipeline run-local --runner subprocess --data-size demo --output-dir $(DEMO_DIR)

# Images (images/README.md): docker or podman, whichever is installed (ENGINE=... to choose). A cluster pulls
# images: push them to a registry and compile the pipeline with those references (README "Kubeflow").
# Local IMAGE names keep "python" in them (kfp's SubprocessRunner warns otherwise).
IMAGE ?= localhost/msenc-python:dev
IMAGE_CUDA ?= localhost/msenc-python-cuda:dev
BASE_IMAGE ?=
BASE_IMAGE_CUDA ?=
# A local CPU torch wheel, where this machine keeps one, is installed instead of downloading torch.
TORCH_WHEEL ?= $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-cp311-*.whl))
LOCAL_BASE_IMAGE ?= localhost/msenc-python-base:bookworm
ENGINE ?=

image:
	ENGINE="$(ENGINE)" BASE_IMAGE="$(BASE_IMAGE)" TORCH_WHEEL="$(TORCH_WHEEL)" bash images/build.sh "$(IMAGE)"

image-cuda:
	ENGINE="$(ENGINE)" DOCKERFILE=images/Dockerfile.cuda BASE_IMAGE="$(BASE_IMAGE_CUDA)" bash images/build.sh "$(IMAGE_CUDA)"

# Without a reachable registry (this machine, CI): a Debian + Python base made here with podman, then `make image`.
image-local:
	bash images/base-image.sh "$(LOCAL_BASE_IMAGE)"
	$(MAKE) image ENGINE=podman BASE_IMAGE="$(LOCAL_BASE_IMAGE)"

clean:
	rm -rf $(VENV) $(DEMO_DIR)
