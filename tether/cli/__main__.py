"""``python -m tether.cli``: what the daemon, shims and tests run."""

from . import main

main()
