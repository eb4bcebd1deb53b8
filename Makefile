# The README's commands. Everything a fresh machine needs is installed from here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# Debian packages the tests, demo and benchmarks drive as independent peers.
APT_PACKAGES := iproute2 iperf3 netsniff-ng tshark iputils-ping tcpdump ethtool
SOURCES := pyproject.toml setup.py $(wildcard pyx/*.pyx pyx/*.pxd pyx/includes/*.pxd pyx/includes/*.h)

.PHONY: build demo test lint docs capi-check bench bench-full system-deps clean asan

build: $(VENV)/.stamp-build

$(VENV)/.stamp-venv:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip "setuptools>=77" wheel "Cython>=3.0.10,<4" "numpy>=1.26"
	touch $@

$(VENV)/.stamp-build: $(VENV)/.stamp-venv $(SOURCES)
	$(PIP) install --no-build-isolation -e ".[test,bench,docs]"
	touch $@

# Tools used as independent peers (iperf3, trafgen, tshark, tcpdump); installed once, only when
# missing.
system-deps: $(VENV)/.stamp-system
$(VENV)/.stamp-system: | $(VENV)/.stamp-venv
	@missing=""; \
	for tool in ip:iproute2 iperf3:iperf3 trafgen:netsniff-ng tshark:tshark ping:iputils-ping \
	    tcpdump:tcpdump ethtool:ethtool; do \
	  command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	touch $@

demo: build system-deps
	$(VENV)/bin/tapengine demo

# ruff; mypy's stubtest: the .pyi stubs against the compiled modules (Cython's own additions
# allowed in pyx/stubtest-allowlist.txt); cython-lint on the Cython sources (it runs pycodestyle
# from PATH, hence the venv first).
STUBBED := $(patsubst src/tapengine/%.pyi,tapengine.%,$(wildcard src/tapengine/_*.pyi))
lint: build
	$(VENV)/bin/ruff check src tests bench examples
	$(PY) -m mypy.stubtest --allowlist pyx/stubtest-allowlist.txt $(STUBBED)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" cython-lint pyx examples/capi examples/stages/acl

# The documentation (docs/), warnings as errors; -E rereads every page so none is skipped.
docs: build
	$(VENV)/bin/sphinx-build -E -W --keep-going -b html docs docs/_build/html

test: build system-deps lint docs
	$(PY) -m pytest

# The extensions built with AddressSanitizer and UBSan (TAPENGINE_SANITIZE=1) into build/asan
# (.venv is not touched), then the fuzz, ring, batchio and gso tests and a 5-second soak through
# `tapengine forward` (privileged) run on them with the ASAN runtime preloaded into the interpreter,
# as ASAN's docs describe for an uninstrumented Python. Any report aborts the run: no report, no
# failure. detect_leaks=0: the interpreter's own allocations at exit are not ours.
ASAN_DIR := build/asan
ASAN_ENV := PYTHONPATH=$(CURDIR)/$(ASAN_DIR)/lib \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:strict_string_checks=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONMALLOC=malloc
asan: build system-deps
	rm -rf $(ASAN_DIR)/lib && mkdir -p $(ASAN_DIR)/lib
	cp -r src/tapengine $(ASAN_DIR)/lib/ && rm -f $(ASAN_DIR)/lib/tapengine/*.so
	TAPENGINE_SANITIZE=1 $(PY) setup.py -q build_ext --force \
	  --build-lib $(ASAN_DIR)/lib --build-temp $(ASAN_DIR)/tmp
	$(ASAN_ENV) $(PY) -c "import tapengine._ring as m; assert '$(ASAN_DIR)' in m.__file__, m.__file__"
	$(ASAN_ENV) $(PY) -m pytest -p no:cacheprovider -q tests/test_fuzz.py tests/test_ring.py \
	  tests/test_batchio.py tests/test_gso.py
	$(ASAN_ENV) $(PY) bench/soak.py --seconds 5 --rate 20000

# The C-level API installs: the sdist and the wheel built from it, each in a fresh virtualenv,
# and examples/capi built against each and run (a couple of minutes: two full builds).
capi-check: build
	examples/capi/check-install.sh $(PY)

bench: build system-deps
	$(PY) -m pytest bench --benchmark-only --benchmark-autosave --benchmark-columns=median,iqr,ops,rounds

clean:
	rm -rf $(VENV) build src/*.egg-info src/tapengine/*.so pyx/*.c src/tapengine/includes
	find src/tapengine -maxdepth 1 -name "*.pxd" ! -name __init__.pxd -delete  # API copies
