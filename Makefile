# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create the virtual environment in .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
# Pinned torch builds that install from the local package cache on our machines.
ifeq ($(ARCH),aarch64)
TORCH_PIN ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
endif
RUN_DIR ?= runs/demo

.PHONY: venv demo test lint bench bench-records clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: venv
	$(VENV)/bin/admmcompress run configs/lenet5_mnist_demo.yaml --out $(RUN_DIR)

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: venv
	$(PY) benchmarks/epoch_overhead.py
	$(PY) benchmarks/run_config.py configs/lenet5_mnist_demo.yaml --name demo

# The issue-5 record runs and the baseline comparison (about an hour on 2 CPU cores).
bench-records: venv
	$(PY) benchmarks/run_config.py configs/lenet5_mnist_record.yaml --name lenet5_record \
		--out runs/lenet5_record
	$(PY) benchmarks/run_config.py configs/lenet300_mnist_record.yaml --name lenet300_record \
		--out runs/lenet300_record
	$(PY) benchmarks/run_config.py configs/lenet5_mnist_record_quant.yaml \
		--name lenet5_record_quant --out runs/lenet5_record_quant
	$(PY) benchmarks/baselines.py --model lenet300 --rates 20 40 65 --epochs 24

clean:
	rm -rf runs .pytest_cache
