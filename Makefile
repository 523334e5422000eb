# Two commands for a fresh clone (see README):  `make run`  and  `make test`.  `make docs` builds the site.
# Both create and reuse .venv; nothing but Python 3.10+ is needed beforehand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv run test test-slow lint docs clean

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
	$(VENV)/bin/ruff check ghost_vision tools tests docs

# The documentation site (MkDocs + Material + mkdocstrings, the [docs] extra) into site/. --strict: a broken
# link or anchor, a page outside the nav, a missing object or a bad cross-reference fails the build. Offline.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) site
