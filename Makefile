# The two commands of the README:
#   make demo   install, then run the prepare job on a generated demo corpus, score it, report on it
#   make test   install, then run the test suite
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install demo test bench

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
