"""Print the requirements of the xcube interoperability environment (``make xcube-env``).

xcube-core 1.14.1 pins ``pandas<3`` and ``tornado<6.5`` while esdc's core pins
``pandas==3.1.1``, so ``pip install -e '.[xcube]'`` cannot resolve. The xcube environment
(``.venv-xcube``) therefore installs esdc with ``--no-deps`` on top of this list: esdc's
core dependencies from pyproject.toml, except those the ``xcube`` extra pins itself (its
pins win), plus the ``xcube`` extra and pytest from the ``test`` extra. GDAL's Python
bindings are built separately against the system library (see the Makefile).

Usage: ``python ci/xcube_requirements.py [pyproject.toml] > requirements.txt``
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

#: Requirements of the ``test`` extra that the interoperability tests need.
TEST_TOOLS = ("pytest", "pytest-timeout")


def _name(req: str) -> str:
    """The normalised project name of a requirement string (PEP 503)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if name is None:
        raise ValueError(f"not a requirement: {req!r}")
    return re.sub(r"[-_.]+", "-", name.group(1)).lower()


def requirements(pyproject: Path) -> list[str]:
    """The xcube environment's requirements, in install order.

    Parameters
    ----------
    pyproject : pathlib.Path
        esdc's pyproject.toml.

    Returns
    -------
    list of str
        esdc's core dependencies not pinned by the ``xcube`` extra, the ``xcube`` extra,
        and :data:`TEST_TOOLS` as the ``test`` extra pins them.
    """
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    extra = project["optional-dependencies"]["xcube"]
    own = {_name(r) for r in extra}
    core = [r for r in project["dependencies"] if _name(r) not in own]
    tools = [r for r in project["optional-dependencies"]["test"] if _name(r) in TEST_TOOLS]
    return core + extra + tools


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "pyproject.toml"
    print("\n".join(requirements(path)))
