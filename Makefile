# The two entry points of the README: `make demo` and `make test`, as root on a fresh Debian.
# Each installs what it needs (Debian packages, the venv) and is idempotent.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the toolkit and its tests use (kept in one list so demo and test agree).
# qemu-system-x86, seabios, ipxe-qemu (virtio-net ROM), dmsetup: the VM lab (tests/lab.py).
# iputils-arping: vs-create probes a new address on its network.
# libnftables1: the nftables backend loads rules through it in-process (vstools/host/nftlib.py).
# tinyproxy: vs-pkg's per-run proxy; apt-cacher-ng: the same with PKG_CACHE=apt-cacher-ng;
# apt-utils (apt-ftparchive): its tests' mirror.
DEB_PACKAGES := python3-venv python3-dev gcc iproute2 nftables libnftables1 iptables busybox-static debootstrap libc6-dev \
	rsync openssh-server openssh-client systemd procps util-linux uidmap btrfs-progs \
	zstd munin-node strace qemu-system-x86 seabios ipxe-qemu dmsetup iputils-arping lvm2 xfsprogs \
	borgbackup bubblewrap python3-aiosmtpd tinyproxy apt-cacher-ng \
	apt-utils
# zsh: the zsh completion scripts are checked with it (tests/deb/test_manpages.py).
DEB_PACKAGES += zsh

.PHONY: all deps venv demo test lint bench clean deb deb-deps test-debian-libs
all: test

# Install only what is missing (scripts/apt-missing.sh): a second run installs nothing.
deps:
	@./scripts/apt-missing.sh $(DEB_PACKAGES)

# Editable in setuptools' compat mode: a .pth line puts the tree on sys.path, so the commands
# and the suite see the working tree, without the import finder the default mode installs
# (pathlib, re, urllib.parse at every interpreter start: about 15 ms of each vs-* command).
$(VENV)/.installed: setup.cfg pyproject.toml Makefile | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat \
		|| $(PY) -m pip install -q -e '.[test]'  # a setuptools without compat mode
	touch $@

venv: deps $(VENV)/.installed

demo: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH ./scripts/demo.sh

test: venv
	$(PY) -m pytest --durations=30 $(PYTEST_ARGS)

# Benchmarks print figures beside the peer tools (systemd-nspawn, lxc-execute); never asserted.
BENCH_PACKAGES := systemd-container lxc
bench: venv
	@./scripts/apt-missing.sh $(BENCH_PACKAGES)
	$(PY) -m bench.bench_start
	$(PY) -m bench.bench_floor
	$(PY) -m bench.bench_floor --network
	$(PY) -m bench.bench_status
	$(PY) -m bench.bench_storm
	$(PY) -m bench.bench_fw
	$(PY) -m bench.bench_monitor
	$(PY) -m bench.bench_backup
	$(PY) -m bench.bench_pkg
	$(PY) -m bench.bench_pool

# `make deb`: the Debian package, built from a copy of the tree (git's files, committed or not;
# outside a git checkout, everything but build/, the venv and built packages)
# under build/deb without network, checked by lintian; vs-tools_VERSION_all.deb lands here.
# DEB_BUILD_PACKAGES: what the build needs (debian/control's Build-Depends) and lintian.
DEB_BUILD_PACKAGES := debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
	python3-argparse-manpage python3-shtab go-md2man dpkg-dev fakeroot lintian man-db
deb-deps:
	@./scripts/apt-missing.sh $(DEB_BUILD_PACKAGES)

# The suite builds the package and generates its man pages and completion (tests/deb).
test: deb-deps

deb: deb-deps
	rm -rf build/deb && mkdir -p build/deb/src
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		git ls-files -z --cached --others --exclude-standard | \
			tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C build/deb/src; \
	else \
		tar --exclude=./build --exclude=./$(VENV) --exclude='./vs-tools_*' -cf - . | \
			tar -xf - -C build/deb/src; \
	fi
	# No network during the build: the package must build from the tree and Debian alone.
	# The system PATH: Debian's python3 builds it, whatever python a user put first (pyenv).
	cd build/deb/src && PATH=/usr/sbin:/usr/bin:/sbin:/bin unshare --net -- dpkg-buildpackage -b -us -uc --no-sign
	lintian --fail-on error build/deb/*.changes
	cp build/deb/vs-tools_*_all.deb .
	@ls -l vs-tools_*_all.deb

# The suite on the libraries the package depends on, Debian 12's own (python3-sh 1.14,
# python3-pyroute2 0.7, python3-seccomp, python3-apscheduler 3.9), not PyPI's: a venv that sees
# the system's packages and adds only the test tools. python-iptables is PyPI's only: not here.
DEB_RUNTIME_PACKAGES := python3-pyroute2 python3-psutil python3-sh python3-apscheduler \
	python3-seccomp python3-setuptools
DEBLIBS_VENV := build/venv-debian
test-debian-libs: deps
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$(DEB_RUNTIME_PACKAGES) >/dev/null
	[ -x $(DEBLIBS_VENV)/bin/python ] || $(PYTHON) -m venv --system-site-packages $(DEBLIBS_VENV)
	$(DEBLIBS_VENV)/bin/pip install -q pytest hypothesis aiosmtpd prometheus-client
	$(DEBLIBS_VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	$(DEBLIBS_VENV)/bin/python -m pytest --ignore=tests/test_tooling.py -k 'not iptc' $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info vs-tools_*.deb
