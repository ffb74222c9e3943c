# The two quick-start commands: `make demo` (the main job on the embedded synthetic data) and
# `make test`. Both create .venv and install everything on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint bench clean

$(STAMP): pyproject.toml scripts/install.sh
	VENV=$(VENV) scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/distrec run jobs/local.yaml $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check distrec tests benchmarks scripts
	$(VENV)/bin/ruff format --check distrec tests benchmarks scripts
	$(VENV)/bin/mypy distrec

# Throughput and memory ratios; prints one JSON line last and writes docs/performance.md (a full run:
# about 40 min on 2 cores, plus about 14 min the first time to generate benchmark (i)'s 100M-row log).
# Quick variant (about 5 min on 2 cores once its logs are cached; without the whole-job figures f, g, i):
# make bench BENCH_ARGS=--quick
bench: $(STAMP)
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
