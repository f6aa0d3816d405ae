import pytest

from esdc.errors import ChecksumError, SourceNotFoundError
from esdc.hashing import file_sha256
from esdc.samples import SAMPLES, sample_path


def test_registry_records_provenance():
    for s in SAMPLES.values():
        assert len(s.sha256) == 64
        assert s.product and s.mission and s.instrument and s.licence and s.citation
        assert s.transport in ("pypi", "debian") and s.version
        assert s.provenance()["obtained_from"].startswith(s.transport)


def test_cached_samples_verify(samples):
    for name, path in samples.items():
        assert file_sha256(path) == SAMPLES[name].sha256


def test_unknown_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("ESDC_CACHE", str(tmp_path))
    with pytest.raises(SourceNotFoundError, match="not registered"):
        sample_path("nope")
    with pytest.raises(SourceNotFoundError, match="esdc samples fetch bmng"):
        sample_path("bmng")


def test_corrupt_cache_detected(tmp_path, monkeypatch):
    monkeypatch.setenv("ESDC_CACHE", str(tmp_path))
    p = tmp_path / "bmng" / "bmng.jpg"
    p.parent.mkdir()
    p.write_bytes(b"not the file")
    with pytest.raises(ChecksumError, match="SHA-256"):
        sample_path("bmng")


def test_import_fetches_nothing(tmp_path, monkeypatch):
    import importlib

    import esdc.samples

    monkeypatch.setenv("ESDC_CACHE", str(tmp_path))
    importlib.reload(esdc.samples)
    assert list(tmp_path.iterdir()) == []
