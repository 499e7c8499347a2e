# Two commands do all set-up on a fresh machine (each creates .venv and installs on first use):
#   make demo   - the offline main job: LoRA on SmolLM2-135M over an embedded E2E-format sample
#   make test   - the test suite (what .ci/run runs)
# Both install from requirements.lock (exact versions + sha256 of every package of .[test]);
#   make lock   - regenerate it after changing dependencies in pyproject.toml (.ci/lock.py)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
# The real SmolLM2-135M-Instruct GGUF and the E2E CSVs of this workplace (see README, "Data and models").
# Without $(SHARED)/bin/get-smollm2 (outside this workplace) and no LORA_JAX_SMOLLM2_GGUF, the
# variable stays unset, never empty: model=smollm2-135m then loads HuggingFaceTB/SmolLM2-135M-Instruct
# from the Hugging Face Hub (conf/model/smollm2-135m.yaml).
# The same for Gemma 3 270M (base, Q4_K_M GGUF; $(SHARED)/bin/get-gemma3, LORA_JAX_GEMMA3_GGUF;
# conf/model/gemma3-270m.yaml falls back to google/gemma-3-270m on the Hub).
GET_SMOLLM2 := $(SHARED)/bin/get-smollm2
GET_GEMMA3 := $(SHARED)/bin/get-gemma3
ENV = LORA_JAX_SMOLLM2_GGUF="$${LORA_JAX_SMOLLM2_GGUF:-$$(if [ -x "$(GET_SMOLLM2)" ]; then "$(GET_SMOLLM2)"; fi)}"; \
      if [ -n "$$LORA_JAX_SMOLLM2_GGUF" ]; then export LORA_JAX_SMOLLM2_GGUF; else unset LORA_JAX_SMOLLM2_GGUF; fi; \
      LORA_JAX_GEMMA3_GGUF="$${LORA_JAX_GEMMA3_GGUF:-$$(if [ -x "$(GET_GEMMA3)" ]; then "$(GET_GEMMA3)"; fi)}"; \
      if [ -n "$$LORA_JAX_GEMMA3_GGUF" ]; then export LORA_JAX_GEMMA3_GGUF; else unset LORA_JAX_GEMMA3_GGUF; fi; \
      LORA_JAX_E2E_DIR="$${LORA_JAX_E2E_DIR:-$(abspath $(SHARED)/data/e2e)}"

LOCK := requirements.lock

.PHONY: setup demo test lint lock
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile --require-hashes -r $(LOCK)
	@# bytecode on every core (pip compiles file by file on one: ~1 min of the 20-min CI budget);
	@# compileall exits non-zero on packages' template files that are not Python, as pip ignores them
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

lock:
	$(PYTHON) .ci/lock.py $(LOCK)

demo: setup
	$(ENV) $(PY) -m lora_jax.train $(ARGS)

# TEST_WORKERS pytest-xdist processes (2: this project's 2-core CI machine; each worker may hold a
# real model, ~3 GB), files kept whole per worker (module fixtures load once). 0: one process.
TEST_WORKERS ?= 2
test: setup
	$(ENV) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

lint: setup
	$(VENV)/bin/ruff check lora_jax tests && $(VENV)/bin/ruff format --check lora_jax tests
