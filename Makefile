# Every target works on a fresh clone: the venv is created and filled on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser demo test test-slow lint tensorboard clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The report page tests open pages in a real headless Chromium (tests/browser.py finds it). Where
# none is installed, try the Debian package (as root); failing that, those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "No Chromium could be installed: the report page tests will be skipped."

demo: $(STAMP)
	$(PY) -m mvtec_ad demo

test: $(STAMP) browser
	$(PY) -m pytest -q

test-slow: $(STAMP) browser
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check mvtec_ad tests benchmarks
	$(PY) -m ruff format --check mvtec_ad tests benchmarks

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir lightning_logs

clean:
	rm -rf lightning_logs datasets/demo .pytest_cache
