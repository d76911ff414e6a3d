# `make demo` and `make test` set everything up on a fresh machine (Python >= 3.10 needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all install benchmark docker-build clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edropout-ray train --config jobs/demo.yaml --output runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=25 -m "not extended"

# everything, with the multi-node cluster rehearsal and PBT, Parquet streaming end to end, sweep and compare --resume and a killed sweep trial (tests marked `extended`): about 11 minutes more
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=25

benchmark: $(STAMP)
	$(BIN)/python benchmarks/step_overhead.py

IMAGE ?= edropout-ray:latest

# The cluster image (needs a Docker engine); push it where the nodes can pull it and name it in clusters/
docker-build:
	docker build -f docker/Dockerfile -t $(IMAGE) .

clean:
	rm -rf runs .pytest_cache
