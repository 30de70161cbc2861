# The two entry points of the README: `make demo` and `make test`, as root on a fresh Debian.
# Each installs what it needs (Debian packages, the venv) and is idempotent.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the toolkit and its tests use (kept in one list so demo and test agree).
# qemu-system-x86, seabios, ipxe-qemu (virtio-net ROM), dmsetup: the VM lab (tests/lab.py).
# iputils-arping: vs-create probes a new address on its network.
# tinyproxy: vs-pkg's per-run proxy; apt-utils (apt-ftparchive): its tests' mirror.
DEB_PACKAGES := python3-venv python3-dev gcc iproute2 nftables iptables busybox-static debootstrap libc6-dev \
	rsync openssh-server openssh-client systemd procps util-linux uidmap btrfs-progs \
	zstd munin-node strace qemu-system-x86 seabios ipxe-qemu dmsetup iputils-arping lvm2 \
	tinyproxy apt-utils

.PHONY: all deps venv demo test lint bench clean
all: test

# Install only what is missing, so a second run costs a dpkg query and nothing else.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "+ apt-get install $$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: deps $(VENV)/.installed

demo: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH ./scripts/demo.sh

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks print figures beside the peer tools (systemd-nspawn, lxc-execute); never asserted.
BENCH_PACKAGES := systemd-container lxc
bench: venv
	@missing=$$(for p in $(BENCH_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends $$missing >/dev/null; fi
	$(PY) -m bench.bench_start
	$(PY) -m bench.bench_monitor
	$(PY) -m bench.bench_pkg

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info
