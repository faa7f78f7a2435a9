# synchub: `make run` starts the whole service, `make test` runs the test suite.
# Both set up .venv first (only Python 3.11+ and make are needed on the machine).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Recipes find the venv's gunicorn, flask, python and honcho first.
VENV_PATH := PATH="$(CURDIR)/$(BIN):$$PATH"

# The stamp's name carries a hash of requirements.txt, so editing it reinstalls.
REQ_HASH := $(shell $(PYTHON) -c "import hashlib; print(hashlib.sha256(open('requirements.txt', 'rb').read()).hexdigest()[:16])" 2>/dev/null)
STAMP := $(VENV)/.installed-$(REQ_HASH)

# Every Procfile process except the one-shot release step (honcho stops all when one exits).
PROCESSES = $(shell sed -n 's/^\([A-Za-z0-9_-]*\):.*/\1/p' Procfile | grep -vx release)

.PHONY: setup run test chaos soak bench bench-tools

setup: $(STAMP)

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "synchub needs Python 3.11 or newer; run: make PYTHON=python3.11 ...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

run: setup
	$(VENV_PATH) $(BIN)/flask --app wsgi db upgrade
	$(VENV_PATH) $(BIN)/flask --app wsgi connections ensure-demo
	$(VENV_PATH) $(BIN)/honcho start -f Procfile $(PROCESSES)

# Three pytest workers (pytest-xdist): most tests wait on real processes (workers, servers,
# a browser), so even on two cores a third worker shortens the suite (docs/RELIABILITY.md,
# "Green the first time"). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3

test: setup
	$(VENV_PATH) $(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist worksteal) $(PYTEST_ARGS)

# The long fault-injection run (docs/RELIABILITY.md); needs SYNCHUB_TEST_POSTGRES_URL.
chaos: setup
	$(VENV_PATH) $(BIN)/python -m tests.chaos $(CHAOS_ARGS)

# The chaos stack under mixed load with a random fault every 30-90 s (docs/RELIABILITY.md, "Soak"):
# make soak SOAK_ARGS="--minutes 60" (or --duration 1h; default 60 min). Needs SYNCHUB_TEST_POSTGRES_URL.
soak: setup
	$(VENV_PATH) $(BIN)/python -m tests.soak $(SOAK_ARGS)

# Every benchmark in bench/, one table, JSON in test-output/bench.json (BENCH_ARGS=--full for defaults).
bench: setup bench-tools
	$(VENV_PATH) $(BIN)/python -m bench.run_all $(BENCH_ARGS)

# The webhook ingest benchmark drives its saturation rounds with wrk (a C load generator:
# one written in Python would need more of the two cores than the server it measures).
# Installed here when missing and possible; otherwise its rows say "not measured".
bench-tools:
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make bench: wrk (the load generator of bench/webhook_ingest.py) is missing; installing Debian's wrk with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1; } || \
	    echo "make bench: could not install wrk; the webhook ingest rows will say not measured"; \
	  else \
	    echo "make bench: wrk is missing and this target installs it only as root with apt-get; the webhook ingest rows will say not measured (install wrk, e.g. sudo apt-get install wrk)"; \
	  fi; }
