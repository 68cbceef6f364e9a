# journeymap: `make demo` and `make test` work on a fresh machine with only python3, pip and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DB     := data/out/journeymap.duckdb

.PHONY: demo test lint bench bench-smoke bench-scale clean venv

# (Re)install when pyproject.toml changes; a half-made venv is rebuilt from scratch.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	@mkdir -p data/out
	@rm -f $(DB) $(DB).wal
	$(BIN)/journeymap run --input data/sample --config data/sample/journeymap.toml --db $(DB)
	$(BIN)/journeymap status --db $(DB) --runs 3
	$(BIN)/journeymap blockers --db $(DB) --top 5
	$(BIN)/journeymap report --db $(DB) --config data/sample/journeymap.toml --out data/out/report.html
	@echo "database: $(DB)"
	@echo "report:   data/out/report.html (open it in a browser)"
	@echo "query:    $(BIN)/journeymap sql --db $(DB)   (read-only prompt; try .tables)"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench notebooks
	$(BIN)/ruff format --check pipeline tests bench notebooks

# journeymap vs DuckDB SQL and pandas baselines at 1M and 10M events, three rounds (medians;
# about 20 minutes); writes bench/results.md.
bench: $(STAMP)
	$(BIN)/python bench/run.py --events 1000000 --events 10000000

# `journeymap run` at 10M and 100M events in one run (about half an hour): bounded memory and
# linear time; writes bench/scale.json and the scale section of bench/results.md.
bench-scale: $(STAMP)
	$(BIN)/python bench/run.py --scale 100000000

# The same at 100k events: checks that the contenders agree, not how fast they are.
bench-smoke: $(STAMP)
	$(BIN)/python bench/run.py --events 100000 --smoke

clean:
	rm -rf data/out bench/cache .pytest_cache .ruff_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
