# Two commands for a fresh clone (see README):  `make run`  and  `make test`.
# Both create and reuse .venv; nothing but Python 3.10+ is needed beforehand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv run test test-slow lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) tools/train.py configs/ssdlite_ghost_shapes.yaml

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

# The slow end-to-end runs (CI runs them too); exit code 5 = none selected, not a failure.
test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q || [ $$? -eq 5 ]

lint: $(STAMP)
	$(VENV)/bin/ruff check ghost_vision tools tests

clean:
	rm -rf $(VENV)
