# Two commands on a fresh machine: `make serve` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODELS ?= models/demo
CONFIG ?= app/configs/default.yaml

.PHONY: install demo-models many-models serve serve-multi test test-unit test-integration bench clean

# torch is installed first, pinned, so no later step resolves it to a CUDA build (ENVIRONMENT.md).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(MODELS)/manifest.json: | $(STAMP)
	$(VENV)/bin/t2i demo-models --out $(MODELS)

demo-models: $(MODELS)/manifest.json

models/many/manifest.json: | $(STAMP)
	$(VENV)/bin/t2i demo-models --out models/many --bases 8 --loras 64 --replicas 4

many-models: models/many/manifest.json

# Foreground until Ctrl-C / SIGTERM; exec so the signal reaches t2i, which stops Serve and Ray.
serve: $(STAMP) $(MODELS)/manifest.json
	exec $(VENV)/bin/t2i serve --config $(CONFIG) --model-root $(MODELS)

# Four BaseModel replicas, eight base models: the coordinator's demo (app/configs/multi-replica.yaml).
serve-multi: $(STAMP) models/many/manifest.json
	exec $(VENV)/bin/t2i serve --config app/configs/multi-replica.yaml

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

bench: $(STAMP)
	$(PY) benchmarks/serving_overhead.py
	$(PY) benchmarks/controlnet_placement.py

clean:
	rm -rf $(VENV) $(MODELS) build *.egg-info
