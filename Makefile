# Two commands do all set-up: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KERNEL := t2ilab

.PHONY: install demo test lab bench example-report clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build from local disk, never an unpinned CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (t2ilab)"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m t2ilab demo --config configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q

# Containers run as root; Jupyter refuses root without --allow-root.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

# The sampling benchmark judges the demo's final checkpoint: `make demo` first when it is missing.
DEMO_FINAL := outputs/demo/checkpoint-epoch-0021

bench: $(STAMP)
	test -d $(DEMO_FINAL) || $(MAKE) demo
	$(PY) bench/run_all.py

# reports/example/ (committed): the index and last milestone of reports/demo/, for readers who have not trained yet.
example-report: $(STAMP)
	test -f reports/demo/index.html || $(MAKE) demo
	$(PY) -m t2ilab.reporting.example_report

clean:
	rm -rf $(VENV) .t2ilab_cache outputs
