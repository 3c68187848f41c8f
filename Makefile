# Two entry points for people: `make demo` runs the fleet simulation, `make test` the tests.
# Both create .venv on first use and install fedmq into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?= --agents 20 --rounds 10
BENCH_ARGS ?=

.PHONY: demo test test-trustees lint bench bench-flood bench-flower wheel arm64-check docs clean

demo: $(VENV)/.installed
	$(BIN)/fedmq simulate $(ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# The relay, culprit, DP and statistics suites again, every decryption by three trustees
# (threshold 2) instead of a whole key (tests/trustee_support.py). Tests of one device
# alone cannot pass there by design: the trustees refuse to decrypt one device's update.
TRUSTEE_SUITES = tests/relay/test_service.py tests/aggregator/test_phases.py \
	tests/aggregator/test_privacy.py \
	"tests/integration/test_attacks.py::test_a_compromised_device_in_a_larger_fleet_loses_only_its_group"
test-trustees: $(VENV)/.installed
	FEDMQ_TEST_TRUSTEES=1 $(BIN)/python -m pytest -q $(TRUSTEE_SUITES)

# Packed vs per-value encryption at 2048 and 3072 bits; a few minutes on 2 cores.
bench: $(VENV)/.installed
	$(BIN)/fedmq bench $(BENCH_ARGS)

# The aggregator's memory and round times while an agent floods it (2 x 60 s, real processes).
bench-flood: $(VENV)/.installed
	$(BIN)/fedmq bench-flood $(BENCH_ARGS)

# The same task in Flower (plaintext FedAvg over gRPC) and fedmq (encrypted, MQTT), ~1 min.
# Flower lives in its own venv: flwr and amqtt pin incompatible typer versions.
bench-flower: $(VENV)/.installed .venv-flower/.installed
	$(BIN)/fedmq bench-flower $(BENCH_ARGS)

.venv-flower/.installed: pyproject.toml $(VENV)/.installed  # the same Python checks first
	$(PYTHON) -m venv .venv-flower
	.venv-flower/bin/pip install -q --upgrade pip
	.venv-flower/bin/pip install -q -e ".[flower]"
	touch $@

# The wheel to copy to devices: `pip install fedmq-*.whl` (no extras) is the device install.
wheel: $(VENV)/.installed
	$(BIN)/pip wheel -q --no-deps . -w build/wheels
	@ls build/wheels/fedmq-*.whl

# The device on arm64: that wheel in a fresh venv of a Debian bookworm arm64 sysroot (cached in
# build/arm64/) under qemu-user, one agent through a round against a loopback gateway. Root;
# installs qemu-user-static and mmdebstrap itself. Cold ~2.5 min, warm ~2 min. ARM64_ARGS=--rebuild
# (ARM64_ARGS="--rebuild --variant minbase": a full Debian base system, ~5 min more)
arm64-check: $(VENV)/.installed
	$(BIN)/python scripts/arm64_check.py $(ARM64_ARGS)

# The docs site (docs/, mkdocs.yml) into build/site; strict: a broken link or anchor fails.
docs: $(VENV)/.installed
	$(BIN)/mkdocs build --strict -d build/site

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python scripts/typecheck.py

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "fedmq needs Python 3.10 or newer"; exit 1; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
		echo "python3-venv is missing; installing it with apt-get"; \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[gateway,dev]"
	touch $@

clean:
	rm -rf $(VENV) .venv-flower runs .pytest_cache .mypy_cache
