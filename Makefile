# Two entry points on a fresh Debian 12 machine, as root: `make demo` and `make test`.
# Services the packages bring (dockerd, etcd) are not started by apt (policy-rc.d): the
# tests start their own, each with its own directories, inside their own namespaces.
PYTHON ?= python3
VENV   := .venv
APT_PACKAGES := iproute2 iputils-ping procps util-linux nftables libnftables1 graphviz \
                containernetworking-plugins iperf3 etcd-server python3-venv python3-pip \
                podman runc busybox-static docker.io

.PHONY: deps demo test faults bench clean

# What is installed is said in a line each; apt's and pip's own output goes to $(LOG),
# and if a step fails, the step and the end of the log are shown.
LOG := $(CURDIR)/build/install.log
QUIETLY = quietly() { "$$@" >>$(LOG) 2>&1 || { rc=$$?; \
            printf '\nfailed (exit %s): %s\n--- the end of %s:\n' "$$rc" "$$*" "$(LOG)" >&2; \
            tail -n 30 $(LOG) >&2; exit $$rc; }; }; quietly
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_ROOT_USER_ACTION := ignore

$(VENV)/.installed: pyproject.toml
	@mkdir -p $(dir $(LOG)) && : > $(LOG)
	@echo "Installing what tether needs (apt's and pip's output: $(LOG))"
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "  Debian packages:" $$missing; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
	    trap 'rm -f /usr/sbin/policy-rc.d' EXIT; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(QUIETLY) apt-get update -q; \
	  $(QUIETLY) apt-get install -y -q $$missing; \
	fi
	@echo "  Python: a virtual environment in $(VENV) with tether, its libraries and the test tools"
	@$(QUIETLY) $(PYTHON) -m venv $(VENV)
	@$(QUIETLY) $(VENV)/bin/pip install --upgrade pip
	@$(QUIETLY) $(VENV)/bin/pip install -e '.[test]' --config-settings editable_mode=compat
	@grep '^Successfully installed' $(LOG) | tail -n 1 | \
	  awk '{n = NF - 2; printf "  done: %d Python package%s installed or updated\n", n, (n == 1 ? "" : "s")}'
	@touch $@

deps: $(VENV)/.installed

demo: deps
	@$(VENV)/bin/tether demo

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
	rm -rf $(VENV) *.egg-info $(LOG)
