"""``python -m esdc.cli``: the ``esdc`` command (used by tests and benchmarks)."""

from esdc.cli import main

main()
