# sbc: the two commands are `make run` and `make test`; the rest are helpers.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sbc-installed
PKI := examples/lab-pki
CONFIG ?= examples/lab.conf
# `make run` works on a copy, so commits from sbc-cli never rewrite the example.
RUN_DIR := run
RUN_CONFIG := $(RUN_DIR)/sbc.conf
TRIAL_ARGS ?= tests

.PHONY: run test lint typecheck trial bench-parse bench check-config clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

$(PKI)/ca.pem: | $(STAMP)
	$(BIN)/sbc-lab-pki $(PKI)

$(RUN_CONFIG):
	mkdir -p $(RUN_DIR)
	cp $(CONFIG) $(RUN_CONFIG)
	install -m 600 examples/lab-users.htdigest $(RUN_DIR)/lab-users.htdigest

# The lab certificate, key and CA of `make run`, `make run-pypy` and `make check-config`.
LAB_TLS = --certificate $(PKI)/sbc.pem --private-key $(PKI)/sbc.key --ca-certificates $(PKI)/ca.pem

run: $(STAMP) $(PKI)/ca.pem $(RUN_CONFIG)
	@echo "sbc: lab PKI in $(PKI) is for testing only"
	@echo "sbc: running $(RUN_CONFIG) (a copy of $(CONFIG)); CLI: $(BIN)/sbc-cli --socket $(RUN_DIR)/sbc.cli"
	$(BIN)/twistd --pidfile= -n sbc --config $(RUN_CONFIG) $(LAB_TLS)

check-config: $(STAMP) $(PKI)/ca.pem
	$(BIN)/twistd --pidfile= -n sbc --check-config --config $(CONFIG) $(LAB_TLS)

# PyPy (3.9 or newer): the same code, 2 to 3 times faster once warm (docs/performance.md).
# cryptography and bcrypt as wheels only: their sources need a Rust toolchain that
# downloads crates; pip then takes the newest releases built for this PyPy.
PYPY ?= pypy3
PYPY_VENV ?= .venv-pypy
PYPY_STAMP := $(PYPY_VENV)/.sbc-installed
TRIAL_PYPY_ARGS ?= tests

$(PYPY_STAMP): setup.cfg pyproject.toml
	$(PYPY) -m venv $(PYPY_VENV)
	$(PYPY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PYPY_VENV)/bin/python -m pip install --quiet --only-binary cryptography,bcrypt \
		-e '.[pypy-test]' --config-settings editable_mode=compat
	$(PYPY_VENV)/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(PYPY_STAMP)

.PHONY: pypy-venv run-pypy trial-pypy
pypy-venv: $(PYPY_STAMP)

# `make run`, on PyPy.
run-pypy: $(PYPY_STAMP) $(PKI)/ca.pem $(RUN_CONFIG)
	@echo "sbc: lab PKI in $(PKI) is for testing only"
	@echo "sbc: running $(RUN_CONFIG) on PyPy; CLI: $(BIN)/sbc-cli --socket $(RUN_DIR)/sbc.cli"
	$(PYPY_VENV)/bin/twistd --pidfile= -n sbc --config $(RUN_CONFIG) $(LAB_TLS)

trial-pypy: $(PYPY_STAMP)
	$(PYPY_VENV)/bin/python -m twisted.trial --temp-directory=_trial_temp_pypy $(TRIAL_PYPY_ARGS)

# `make test` runs the suite on PyPy too where pypy3 is installed (on CI it must be).
.PHONY: trial-pypy-if-present
trial-pypy-if-present:
	@if command -v $(PYPY) >/dev/null 2>&1 || [ "$${CI:-}" = true ]; then \
		$(MAKE) --no-print-directory trial-pypy; \
	else \
		echo "sbc: $(PYPY) not found: the PyPy run of the suite is left out (apt-get install pypy3 pypy3-venv)"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

trial: $(STAMP)
	$(BIN)/coverage erase
	$(BIN)/coverage run -m twisted.trial $(TRIAL_ARGS)
	$(BIN)/coverage report

test: lint typecheck trial trial-pypy-if-present

# sippy (the comparison point) ships a top-level `tests` package that would shadow
# ours, so it lives in its own directory, on the path of the benchmarks only.
BENCH_SITE := $(VENV)/bench-site

$(BENCH_SITE)/sippy: | $(STAMP)
	$(BIN)/python -m pip install --quiet --target $(BENCH_SITE) sippy

bench-parse: $(STAMP) $(BENCH_SITE)/sippy
	PYTHONPATH=$(BENCH_SITE) SIPLOG_LVL=WARN $(BIN)/python benchmarks/bench_parse.py

$(BENCH_SITE)/matplotlib: | $(STAMP)
	$(BIN)/python -m pip install --quiet --target $(BENCH_SITE) matplotlib

# SIPp load against the real daemon and sippy's B2BUA, alternating step by step
# (system under test on CPU 0, SIPp on CPU 1), a ramp past the failure point, and
# a plot; needs sipp (apt-get install sip-tester). About 15 minutes; see
# docs/performance.md. BENCH_CALLS_ARGS="--plot docs/perf-calls.png" redraws the doc's plot.
.PHONY: bench-calls
# With a PyPy venv (make pypy-venv), sbc on PyPy ramps too ("sbc-pypy").
bench-calls: $(STAMP) $(BENCH_SITE)/sippy $(BENCH_SITE)/matplotlib
	PYTHONPATH=$(BENCH_SITE) SIPLOG_LVL=WARN $(BIN)/python benchmarks/bench_calls.py \
		$(if $(wildcard $(PYPY_STAMP)),--pypy $(PYPY_VENV)) $(BENCH_CALLS_ARGS)

# Where the daemon's CPU per call goes at one rate (strace, py-spy, /proc); needs sipp.
.PHONY: bench-probe
bench-probe: $(STAMP)
	$(BIN)/python -m pip install --quiet py-spy
	$(BIN)/python benchmarks/probe_daemon.py $(BENCH_PROBE_ARGS)

# The SBC's own CPU per call, in process, no sockets (add BENCH_CORE_ARGS=--profile).
.PHONY: bench-core
bench-core: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py $(BENCH_CORE_ARGS)

# Instructions per call in process (callgrind; repeatable where CPU time drifts),
# e.g. BENCH_INSTRUCTIONS_ARGS="--code /tmp/before" to compare a change; needs valgrind.
.PHONY: bench-instructions
bench-instructions: $(STAMP)
	$(BIN)/python benchmarks/bench_instructions.py $(BENCH_INSTRUCTIONS_ARGS)

# A 5,000 requests/s flood from one source for 20 s, with trusted calls at the same time:
# the SBC's CPU once the source is banned. About 75 seconds.
.PHONY: bench-flood
bench-flood: $(STAMP)
	$(BIN)/python benchmarks/bench_flood.py $(BENCH_FLOOD_ARGS)

bench: bench-parse bench-core

# Coverage-guided fuzzing (atheris/libFuzzer) of the parser, the stream framer and a
# whole in-memory SBC; not a test: docs/testing.md. FUZZ_RUNS inputs per target.
FUZZ_RUNS ?= 100000
FUZZ_STAMP := $(VENV)/.fuzz-installed

$(FUZZ_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[fuzz]' --config-settings editable_mode=compat
	touch $(FUZZ_STAMP)

.PHONY: fuzz
fuzz: $(FUZZ_STAMP)
	$(BIN)/python fuzz/run.py --runs $(FUZZ_RUNS) $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) $(PYPY_VENV) _trial_temp _trial_temp_pypy .coverage *.egg-info .mypy_cache .ruff_cache
