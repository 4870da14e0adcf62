# csud — the two commands a newcomer needs are `make demo` and `make test` (see README.md).
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_SECONDS ?= 30

.PHONY: install install-service demo test check lint typecheck bench fuzz clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	./scripts/setup.sh
	touch $@

## demo: serve 3 simulated cameras and record them into ./demo-store for $(DEMO_SECONDS) s
demo: install
	$(BIN)/python scripts/demo.py --seconds $(DEMO_SECONDS)

## test: the whole test suite (unit + integration)
test: install
	$(BIN)/pytest -q

## check: lint, types, tests
check: install lint typecheck test

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

## fuzz: 10^6 mutated inputs through every parser of camera bytes (scripts/fuzz.py; not in make test)
fuzz: install
	$(BIN)/python scripts/fuzz.py --inputs 1000000

## bench: ingest benchmark (50 cameras, 4 Mbit/s, 30 s)
bench: install
	$(BIN)/python scripts/bench_ingest.py --cameras 50 --seconds 30

## install-service: as root, install csud as a systemd service (user, /etc/csud, /var/lib/csud, unit)
install-service:
	./scripts/install.sh

clean:
	rm -rf $(VENV) demo-store .pytest_cache .mypy_cache .ruff_cache
