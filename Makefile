# Two entry points: `make app` (install, then serve the demo) and `make test` (install, then lint and test).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: app test browser

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --editable .
	touch $@

# Debian's chromium for the browser tests, with CJK fonts so Chinese labels render in screenshots.
browser:
	@command -v chromium >/dev/null && dpkg -s fonts-noto-cjk >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq chromium fonts-noto-cjk >/dev/null)

app: $(VENV)/.installed
	$(PY) app.py

test: $(VENV)/.installed browser
	$(PY) -m ruff check .
	$(PY) -m pytest
