# taskstream: two commands on a fresh machine, `make run` and `make test`.
# Every target installs what it needs and is safe to run again.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# The compiled kernel (native/, Rust): rebuilt when its sources change.
NATIVE_SRC   := native/Cargo.toml native/Cargo.lock native/pyproject.toml \
                native/taskstream_native.pyi $(wildcard native/src/*.rs)
NATIVE_STAMP := $(VENV)/.native-$(shell cat $(NATIVE_SRC) | cksum | cut -d' ' -f1)
# rustup installs cargo here; a non-login shell may not have it on PATH.
export PATH := $(HOME)/.cargo/bin:$(PATH)
KAFKA_PORT ?= 19092
export KAFKA_PORT

.PHONY: setup run test test-unit test-integration lint bench chaos soak kafka-up kafka-down kafka-status clean

setup: $(STAMP) $(NATIVE_STAMP)
	@# Our packages' bytecode, as pip writes it for installed ones: a worker
	@# then starts without compiling them (~0.25 CPU s per start), even where
	@# PYTHONDONTWRITEBYTECODE is set. Files already compiled are skipped.
	@PYTHONDONTWRITEBYTECODE= $(BIN)/python -m compileall -q app schemas streams taskstream bench chaos

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# setuptools' notice about editable installs is not news to anyone here.
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

$(NATIVE_STAMP): $(STAMP) $(NATIVE_SRC)
	@command -v cargo >/dev/null || { echo "native/ needs Rust's cargo (https://rustup.rs)" >&2; exit 1; }
	@echo "building the native kernel (native/, Rust; about a minute the first time)"
	$(BIN)/python -m pip install -q ./native
	@rm -f $(VENV)/.native-*
	@touch $@

# The main job: local broker (unless KAFKA_BOOTSTRAP is set), topics, sample
# data, one worker in the foreground. Ctrl-C stops the worker, and the broker
# too if this run started it.
run: setup
	$(BIN)/python -m taskstream.devrun

# The whole suite; the suite starts and stops its own broker on free ports.
test: setup
	cd native && cargo test --release --quiet
	$(BIN)/python -m pytest -q --durations=15

test-unit: setup
	cd native && cargo test --release --quiet
	$(BIN)/python -m pytest -q tests/unit tests/stream

test-integration: setup
	$(BIN)/python -m pytest -q tests/integration

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m bench

# The fault suite (docs/chaos.md): a long run with worker SIGKILLs, a SIGSTOP
# past the session timeout, a broker restart and a lost RocksDB folder, then
# the fuzz at 20,000 examples. Minutes; not part of `make test`.
chaos: setup
	$(BIN)/python -m chaos
	$(BIN)/python -m chaos --brokers 3
	TASKSTREAM_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest -q tests/unit/test_fuzz_decode.py \
		tests/unit/test_access_fuzz.py tests/integration/test_fuzz_worker.py

# A sustained live load at 80% of one worker's capacity for 10 minutes.
soak: setup
	$(BIN)/python -m bench soak

# BROKERS=3: a local cluster of three nodes (replication factor 3).
BROKERS ?= 1
kafka-up: setup
	$(BIN)/taskstream kafka up --brokers $(BROKERS)

kafka-down: setup
	$(BIN)/taskstream kafka down

kafka-status: setup
	$(BIN)/taskstream kafka status

clean:
	-test -x $(BIN)/taskstream && $(BIN)/taskstream kafka down
	rm -rf $(VENV) .cache .data .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info \
		native/target
