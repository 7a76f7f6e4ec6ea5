# Two entry points on a fresh Debian 12 machine, as root: `make demo` and `make test`.
# Services the packages bring (dockerd, etcd) are not started by apt (policy-rc.d): the
# tests start their own, each with its own directories, inside their own namespaces.
PYTHON ?= python3
VENV   := .venv
APT_PACKAGES := iproute2 iputils-ping procps util-linux nftables libnftables1 \
                containernetworking-plugins iperf3 etcd-server python3-venv python3-pip \
                podman runc busybox-static docker.io

.PHONY: deps demo test faults bench clean

$(VENV)/.installed: pyproject.toml
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  guard=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; guard=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; rc=$$?; \
	  if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; [ $$rc -eq 0 ]; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

deps: $(VENV)/.installed

demo: deps
	$(VENV)/bin/tether demo

test: deps
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests

# The fault-injection suite alone: 200 rounds of concurrent operations with the daemon
# SIGKILLed at a random moment, invariants checked against the kernel (about 20 min).
# TETHER_FAULT_SEED=N replays; the report goes to bench/results/.
faults: deps
	TETHER_FAULT_ROUNDS=200 TETHER_FAULT_REPORT=bench/results/faults-$(shell date +%F).md \
	  $(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/e2e/test_fault_injection.py

bench: deps
	$(VENV)/bin/python bench/attach.py

clean:
	rm -rf $(VENV) *.egg-info
