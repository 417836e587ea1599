# The two commands a new user needs: `make serve` (set up, train the demo model, serve it) and `make test`.
PY := .venv/bin/python
DEMO_DATA := data/demo
DEMO_RUN := runs/demo
STORE := model_store

.PHONY: setup test serve stop soak benchmark accuracy lint test-kserve clean help

help:
	@echo "make serve  - set up, generate demo data, train the demo model, build pigment.mar, serve it"
	@echo "make test   - set up and run the test suite (includes real TorchServe tests)"
	@echo "make stop   - stop the TorchServe started by make serve"
	@echo "make soak   - long reliability run (load, soak, faults) against a real TorchServe"
	@echo "make benchmark   - performance benchmark: baseline vs offline vs served (runs/benchmark/report;"
	@echo "                   python -m benchmarks --update-docs refreshes docs/performance.md)"
	@echo "make accuracy    - every fast backend of the demo model against eager fp32 (minutes)"
	@echo "make lint        - ruff over the tree (pyproject.toml [tool.ruff])"
	@echo "make test-kserve - the KServe-native predictor's tests in their own .venv-kserve"

setup:
	bash scripts/setup_venv.sh
	bash scripts/ensure_java.sh

test: setup
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pytest -q tests

serve: setup
	bash scripts/quickstart.sh

stop:
	bash scripts/stop_server.sh

soak: setup
	$(PY) -m pytest -q -s -m soak tests/soak --no-header -p no:cacheprovider --basetemp=runs/soak

benchmark: setup
	bash scripts/quickstart.sh --model-only
	$(PY) -m benchmarks

accuracy: setup
	bash scripts/quickstart.sh --model-only
	$(PY) -m benchmarks.accuracy --checkpoint $(DEMO_RUN)/best_model.pth

lint: setup
	$(PY) -m ruff check .

test-kserve: setup
	bash kserve/setup_venv.sh
	.venv-kserve/bin/python -m pytest -q tests/test_kserve_native.py

clean:
	rm -rf $(DEMO_RUN) $(STORE) logs
