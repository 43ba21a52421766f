# Every target works on a fresh clone: the venv is created and filled on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint tensorboard clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m mvtec_ad demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check mvtec_ad tests benchmarks
	$(PY) -m ruff format --check mvtec_ad tests benchmarks

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir lightning_logs

clean:
	rm -rf lightning_logs datasets/demo .pytest_cache
