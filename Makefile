# The two quick-start commands (see README):
#   make run    install the daemon into .venv and run it on the embedded default configuration
#   make test   install everything the tests need (SIPp from Debian's sip-tester, and rtpengine-daemon
#               for the test that drives rtpengine instead of our relay) and run them
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test
NSTAMP := $(VENV)/native/manifest.json
# What the compiled build depends on (b2bua/native.py): any change to a source redoes it.
NATIVE_SRC := $(shell find b2bua rtp_relay -name "*.py")
ARGS   ?=

.PHONY: run test install install-test lint typecheck clean system-deps bench

# Debian packages the quick start relies on: venv support, a C compiler and the Python headers
# for the compiled SIP stack; SIPp and rtpengine for the tests.
system-deps:
	@./deploy/ensure-debian-packages.sh python3-venv gcc python3-dev

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[native]'
	@touch $@

# The compiled SIP stack (b2bua/native.py). A failed build is reported, not fatal: the daemon
# then runs the same modules from source, and says so in its `started` log line.
$(NSTAMP): $(STAMP) $(NATIVE_SRC)
	@$(PY) -m b2bua.native_build >/dev/null 2>$(VENV)/native-build.log \
	  || echo "warning: could not compile the SIP stack (see $(VENV)/native-build.log); running it from source" >&2

$(TSTAMP): $(STAMP) pyproject.toml
	@./deploy/ensure-debian-packages.sh sip-tester rtpengine-daemon
	$(PY) -m pip install -q -e '.[test,dev]'
	@touch $@

install: $(STAMP) $(NSTAMP)
install-test: $(TSTAMP) $(NSTAMP)

run: $(STAMP) $(NSTAMP)
	$(VENV)/bin/b2bua $(ARGS)

test: $(TSTAMP) $(NSTAMP)
	$(PY) -m pytest $(ARGS)

lint: $(TSTAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Benchmarks beside the peers (see README "Benchmarks"): one table in bench/results/latest.md (+ .json).
# `make bench QUICK=1` is a short smoke run of every part. Peers are installed by the bench itself
# (Sippy into bench/.venv-peers, Kamailio with apt-get), never into the project's environment.
BENCH_ARGS ?=
bench: $(TSTAMP) $(NSTAMP)
	$(PY) -m bench.run $(if $(QUICK),--quick) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache
