# vlrb: `make demo` then `make test` on a fresh machine. `make help` lists every target.
PY      ?= python3
VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo test test-full bench bench-build bench-eval bench-features bench-train bench-e2e bench-serve data features train evaluate clean clean-logs

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv/ and install vlrb with its dependencies

demo: $(STAMP) ## install, build the demo benchmark, extract features, train routers, print the leaderboard
	$(PYTHON) scripts/demo.py

data: $(STAMP) ## build the demo benchmark (python build_data.py)
	$(PYTHON) build_data.py

features: $(STAMP) ## extract the default embeddings for the demo benchmark
	$(PYTHON) build_data.py stage=features

train: $(STAMP) ## train the default router on the demo benchmark
	$(PYTHON) train.py

evaluate: $(STAMP) ## leaderboard + Pareto plot on the demo benchmark
	$(PYTHON) evaluate.py

test: $(STAMP) ## fast tests (not marked slow), on every core
	$(PYTHON) -m pytest -m "not slow" -q -n auto --dist loadfile

test-full: $(STAMP) ## every test, slow ones included (the README's long commands too)
	$(PYTHON) -m pytest -q -n auto --dist loadfile

bench-build: $(STAMP) ## time + peak memory of building the full-scale demo (30,540 x 17)
	$(PYTHON) benchmarks/bench_build.py

bench-eval: $(STAMP) ## baselines + metrics + 1,000 bootstrap resamples at full scale
	$(PYTHON) benchmarks/bench_eval.py

bench-features: $(STAMP) ## feature extraction: default path vs plain eager, pipeline vs bare, whole stage, full-scale floor
	$(PYTHON) build_data.py progress=false
	$(PYTHON) benchmarks/bench_features.py data/demo --stage
	$(PYTHON) build_data.py data=demo_full progress=false
	$(PYTHON) benchmarks/bench_features.py data/demo_full --full-stage

bench-train: $(STAMP) ## fit every feature router (6 x 6 grid) + routing throughput at full scale
	$(PYTHON) benchmarks/bench_train.py

bench-e2e: $(STAMP) ## end-to-end routing throughput (encoder included) at batch 64
	$(PYTHON) benchmarks/bench_e2e.py

bench-serve: $(STAMP) ## serve.py router latency vs the bare encoder forward, requests/s at 64 vs offline route_raw
	$(PYTHON) benchmarks/bench_serve.py --rounds 5 --json logs/bench/serve.json

bench: $(STAMP) ## every benchmark script (each prints its targets; a missed target does not stop the rest)
	-$(MAKE) --no-print-directory bench-build
	-$(MAKE) --no-print-directory bench-eval
	-$(MAKE) --no-print-directory bench-features
	-$(MAKE) --no-print-directory bench-train
	-$(MAKE) --no-print-directory bench-e2e
	-$(MAKE) --no-print-directory bench-serve

clean-logs: ## remove run logs
	rm -rf logs

clean: clean-logs ## remove built data, logs and caches (keeps .venv)
	rm -rf data .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
