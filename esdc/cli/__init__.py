"""The ``esdc`` command: build, info, verify, samples, train, embed, index, search, serve, ...

Exit codes: 0 success; 1 ``verify`` found problems; 2 a user error (bad recipe,
missing file, existing target, ...), reported in one paragraph without a traceback.

One thin module per command group (``cube``, ``ml``, ``search``, ``docs``); they register
their commands on :data:`app` (``esdc.cli._common``) when imported here.
"""

from __future__ import annotations

import sys

import esdc.cli.cube  # noqa: F401, I001  (registers build, info, verify, plot)
import esdc.cli.docs  # noqa: F401  (registers demo, card, catalog, reference, samples)
import esdc.cli.ml  # noqa: F401  (registers train, embed, serve-model, evaluate-fill)
import esdc.cli.search  # noqa: F401  (registers index, search, serve, evaluate-search, ...)
import esdc.cli.versions  # noqa: F401  (registers log, tag)
from esdc.cli._common import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``esdc`` console script."""
    sys.exit(app())  # pragma: no cover
