# The two commands a new user needs: `make serve` (set up, train the demo model, serve it) and `make test`.
PY := .venv/bin/python
DEMO_DATA := data/demo
DEMO_RUN := runs/demo
STORE := model_store

.PHONY: setup test serve stop soak benchmark test-kserve clean help

help:
	@echo "make serve  - set up, generate demo data, train the demo model, build pigment.mar, serve it"
	@echo "make test   - set up and run the test suite (includes real TorchServe tests)"
	@echo "make stop   - stop the TorchServe started by make serve"
	@echo "make soak   - long reliability run (load, soak, faults) against a real TorchServe"
	@echo "make benchmark   - performance benchmark: design baseline vs offline vs served (docs/performance.md)"
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
	$(PY) scripts/benchmark.py

test-kserve: setup
	bash kserve/setup_venv.sh
	.venv-kserve/bin/python -m pytest -q tests/test_kserve_native.py

clean:
	rm -rf $(DEMO_RUN) $(STORE) logs
