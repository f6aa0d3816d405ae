"""What every ``esdc`` command shares: the Typer app, consoles, the error reporter.

Exit codes: 0 success; 1 ``verify`` found problems; 2 a user error (bad recipe,
missing file, existing target, ...), reported in one paragraph without a traceback.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from esdc.errors import EsdcError

__all__ = ["FLAGS", "StorageOptions", "app", "as_cli", "err", "out", "png_target",
           "samples_app", "user_errors"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Earth System Data Cubes: build, inspect and verify cubes.")
samples_app = typer.Typer(no_args_is_help=True, help="Real sample data: list and fetch.")
app.add_typer(samples_app, name="samples")

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
# fsspec options of s3:// (any URL) cubes; see esdc.remote.storage_options.
StorageOptions = Annotated[list[str] | None, typer.Option(
    "--storage-option", metavar="KEY=VALUE",
    help="fsspec option of an s3:// (or other URL) cube, e.g. endpoint_url=http://HOST:9000 "
         "or anon=true (VALUE may be JSON); repeatable. Also: ESDC_STORAGE_OPTIONS (a JSON "
         "object) and the AWS_* variables.")]

# Library messages name Python parameters; a CLI user reads the matching flag. The one
# table that maps them (longest first, so that ``append=True`` is not cut by a shorter key).
FLAGS: dict[str, str] = {
    "overwrite=True": "--overwrite",
    "append=True": "--append",
    "resume=True": "--resume",
    "checksums=True": "--checksums",
    "storage_options=": "--storage-option ",
}


def as_cli(message: str) -> str:
    """``message`` with each Python parameter of :data:`FLAGS` replaced by its CLI flag."""
    for param in sorted(FLAGS, key=len, reverse=True):
        message = message.replace(f"`{param}`", f"`{FLAGS[param]}`").replace(param, FLAGS[param])
    return message


def user_errors(fn: F) -> F:
    """Report :class:`EsdcError` as one paragraph on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EsdcError as exc:
            err.print(f"[bold red]error:[/] {as_cli(str(exc))}", highlight=False,
                      soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as exc:
            if not _from_codec(exc):
                raise
            err.print(f"[bold red]error:[/] a chunk of the cube could not be decoded "
                      f"({type(exc).__name__}: {exc}): its files are damaged. `esdc verify "
                      "CUBE --checksums` names the corrupted or missing chunks; rebuild the "
                      "cube or restore it from a copy.", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _from_codec(exc: BaseException) -> bool:
    """True if ``exc`` was raised while decoding a Zarr chunk (a damaged chunk file)."""
    import traceback

    marks = ("numcodecs", f"zarr{os.sep}codecs")
    return any(m in frame.filename for frame in traceback.extract_tb(exc.__traceback__)
               for m in marks)


def png_target(path: Path, option: str) -> Path:
    """Check before any work that ``path`` can be written: its folder exists."""
    folder = path.parent
    if not folder.is_dir():
        raise EsdcError(f"{option} {path}: the folder {folder} does not exist (or is not a "
                        "folder); create it or choose another path.")
    if path.is_dir():
        raise EsdcError(f"{option} {path} is a folder; give a file name such as map.png.")
    return path
