# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

# torch is pinned to the CPU build first: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -e '.[train,test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/egt run examples/egtrun-tiny.yaml --local

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

bench: install
	$(PY) bench/entropy.py

clean:
	rm -rf runs .cache .pytest_cache
