# Two entry points for a newcomer: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need: torch first (the pinned CPU wheel; set TORCH_SPEC for
# another build), then this package with its pipeline and dev extras.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.msenc-installed
DEMO_DIR ?= demo-output

.PHONY: install test demo image clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[pipeline,dev]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/msenc generate-data --size demo --seed 0 --output-dir $(DEMO_DIR)/raw
	$(VENV)/bin/msenc ingest --input-path $(DEMO_DIR)/raw --output-dir $(DEMO_DIR)/unified

clean:
	rm -rf $(VENV) $(DEMO_DIR)
