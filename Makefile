# The README's commands. Everything a fresh machine needs is installed from here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# Debian packages the tests, demo and benchmarks drive as independent peers.
APT_PACKAGES := iproute2 iperf3 netsniff-ng tshark iputils-ping
SOURCES := pyproject.toml setup.py $(wildcard pyx/*.pyx pyx/*.pxd pyx/includes/*.pxd pyx/includes/*.h)

.PHONY: build demo test lint docs capi-check bench bench-full system-deps clean

build: $(VENV)/.stamp-build

$(VENV)/.stamp-venv:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip "setuptools>=77" wheel "Cython>=3.0.10,<4" "numpy>=1.26"
	touch $@

$(VENV)/.stamp-build: $(VENV)/.stamp-venv $(SOURCES)
	$(PIP) install --no-build-isolation -e ".[test,bench,docs]"
	touch $@

# Tools used as independent peers (iperf3, trafgen, tshark); installed once, only when missing.
system-deps: $(VENV)/.stamp-system
$(VENV)/.stamp-system: | $(VENV)/.stamp-venv
	@missing=""; \
	for tool in ip:iproute2 iperf3:iperf3 trafgen:netsniff-ng tshark:tshark ping:iputils-ping; do \
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
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" cython-lint pyx examples/capi

# The documentation (docs/), warnings as errors; -E rereads every page so none is skipped.
docs: build
	$(VENV)/bin/sphinx-build -E -W --keep-going -b html docs docs/_build/html

test: build system-deps lint docs
	$(PY) -m pytest

# The C-level API installs: the sdist and the wheel built from it, each in a fresh virtualenv,
# and examples/capi built against each and run (a couple of minutes: two full builds).
capi-check: build
	examples/capi/check-install.sh $(PY)

bench: build system-deps
	$(PY) -m pytest bench --benchmark-only --benchmark-autosave --benchmark-columns=median,iqr,ops,rounds

clean:
	rm -rf $(VENV) build src/*.egg-info src/tapengine/*.so pyx/*.c src/tapengine/includes
	find src/tapengine -maxdepth 1 -name "*.pxd" ! -name __init__.pxd -delete  # API copies
