"""What every ``esdc`` command shares: the Typer app, consoles, the error reporter.

Exit codes: 0 success; 1 ``verify`` found problems; 2 a user error (bad recipe,
missing file, existing target, ...), reported in one paragraph without a traceback.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from esdc.errors import ChunkDecodeError, EsdcError
from esdc.storage import Target, resolve

__all__ = ["FLAGS", "StorageOptions", "Version", "app", "as_cli", "cube_target", "err", "out",
           "png_target", "samples_app", "user_errors"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Earth System Data Cubes: build, inspect and verify cubes.")
samples_app = typer.Typer(no_args_is_help=True, help="Real sample data: list and fetch.")
app.add_typer(samples_app, name="samples")

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
# fsspec options of s3:// (any URL) cubes; see esdc.storage.storage_options.
StorageOptions = Annotated[list[str] | None, typer.Option(
    "--storage-option", metavar="KEY=VALUE",
    help="fsspec option of an s3:// (or other URL) cube, e.g. endpoint_url=http://HOST:9000 "
         "or anon=true (VALUE may be JSON); repeatable. Also: ESDC_STORAGE_OPTIONS (a JSON "
         "object) and the AWS_* variables.")]

Version = Annotated[str | None, typer.Option(
    "--version", help="Read this version of a versioned (Icechunk) cube: a tag or a snapshot "
    "id from `esdc log`; default: the newest.")]

# Library messages name Python parameters; a CLI user reads the matching flag. The one
# table that maps them (longest first, so that ``append=True`` is not cut by a shorter key).
FLAGS: dict[str, str] = {
    "overwrite=True": "--overwrite",
    "append=True": "--append",
    "update=True": "--update",
    "resume=True": "--resume",
    "checksums=True": "--checksums",
    "store=": "--store ",
    "version=": "--version ",
    "storage_options=": "--storage-option ",
    "out=": "--out ",
    "run_id=": "--model ",
    "scheduler=": "--scheduler ",
    "tracking_uri=": "--tracking-uri ",
    # esdc.search (index, search, serve, evaluate-search, balance)
    "bbox=": "--bbox ",
    "clicks=": "--clicks ",
    "clusters=": "--clusters ",
    "device=": "--device ",
    "kind=": "--kind ",
    "label=": "--label ",
    "negative_weight=": "--negative-weight ",
    "per_cluster=": "--per-cluster ",
    "queries=": "--queries ",
    "rounds=": "--rounds ",
    "scales=": "--scales ",
    "time=": "--time ",
    "variable=": "--variable ",
    # esdc.gapfill (evaluate-fill)
    "domain_variable=": "--domain ",
    "domain_values=": "--domain-value ",
    "fraction=": "--fraction ",
    "period=": "--period ",
    "static=True": "--static",
    # esdc.ml.train (train --tensorboard)
    "tensorboard=": "--tensorboard ",
    # esdc.plot (plot --rgb) and esdc.export (export, point)
    "rgb=": "--rgb ",
    "variables=": "--variables ",
}


def as_cli(message: str) -> str:
    """``message`` with each Python parameter of :data:`FLAGS` replaced by its CLI flag.

    A parameter is replaced where it starts a word (``time=`` in ``give time=DATE``, not
    in ``obstime=``).
    """
    for param in sorted(FLAGS, key=len, reverse=True):
        flag = FLAGS[param]
        message = re.sub(rf"(?<![\w.-]){re.escape(param)}", lambda _, f=flag: f, message)
    return message


def user_errors(fn: F) -> F:
    """Report :class:`EsdcError` as one paragraph on stderr and exit 2.

    A :class:`~esdc.errors.ChunkDecodeError` (a damaged chunk file, raised where chunks
    are read) gets the damaged-store paragraph that points at ``esdc verify --checksums``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ChunkDecodeError as exc:
            what = getattr(exc, "key", None)
            why = getattr(exc, "reason", None) or str(exc)
            text = (f"a chunk of the cube could not be decoded ({f'{what}: ' if what else ''}"
                    f"{why}): its files are damaged. `esdc verify CUBE --checksums` names the "
                    "corrupted or missing chunks; rebuild the cube or restore it from a copy.")
            err.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except EsdcError as exc:
            err.print(f"[bold red]error:[/] {escape(as_cli(str(exc)))}", highlight=False,
                      soft_wrap=True)  # the message literally: rich would eat "[west, ...]"
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def cube_target(cube: str | Path, pairs: list[str] | None = None,
                version: str | None = None) -> Target:
    """The storage target of a CUBE argument, at ``version`` (``--version``) when given.

    A URL's options come from ``ESDC_STORAGE_OPTIONS`` and the ``--storage-option`` pairs.
    """
    return resolve(cube, pairs=list(pairs or [])).at(version)


def png_target(path: Path, option: str) -> Path:
    """Check before any work that ``path`` can be written: its folder exists."""
    folder = path.parent
    if not folder.is_dir():
        raise EsdcError(f"{option} {path}: the folder {folder} does not exist (or is not a "
                        "folder); create it or choose another path.")
    if path.is_dir():
        raise EsdcError(f"{option} {path} is a folder; give a file name such as map.png.")
    return path
