"""Where a location enters: resolve, is_url, storage options, the target registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esdc.errors import StorageError
from esdc.storage import (
    TARGETS,
    LocalTarget,
    ObjectTarget,
    Target,
    is_url,
    register_target,
    resolve,
    storage_options,
)


@pytest.mark.parametrize(("where", "url"), [
    ("s3://bucket/cube.zarr", True), ("gs://b/c.zarr", True), ("s3+https://b/c", True),
    ("file:///tmp/c.zarr", False), ("local://c.zarr", False), ("cubes/c.zarr", False),
    (Path("s3://bucket/cube.zarr"), False), ("://nothing", False), ("a b://c", False),
])
def test_is_url(where: object, url: bool) -> None:
    assert is_url(where) is url


def test_resolve_picks_the_target_once(tmp_path: Path) -> None:
    local = resolve(tmp_path / "c.zarr")
    assert isinstance(local, LocalTarget) and local.location == tmp_path / "c.zarr"
    assert resolve(f"file://{tmp_path}/c.zarr") == local
    assert resolve(str(tmp_path / "c.zarr")) == local
    remote = resolve("s3://bucket/cubes/c.zarr/", {"anon": True})
    assert isinstance(remote, ObjectTarget)
    assert remote.location == "s3://bucket/cubes/c.zarr" and remote.options == {"anon": True}
    assert resolve("gs://bucket/c.zarr").kind == "URL"  # gcsfs is not imported to resolve
    assert resolve(remote) is remote
    assert repr(remote) == "ObjectTarget('s3://bucket/cubes/c.zarr')"


def test_relative_paths_are_anchored_only_when_asked(tmp_path: Path) -> None:
    assert resolve("cubes/c.zarr").location == Path("cubes/c.zarr")
    assert resolve("cubes/c.zarr", cwd=tmp_path).location == tmp_path / "cubes/c.zarr"
    assert resolve(tmp_path / "c.zarr", cwd=Path("/elsewhere")).location == tmp_path / "c.zarr"
    assert resolve("s3://b/c.zarr", cwd=tmp_path).location == "s3://b/c.zarr"


def test_the_registry_names_module_paths() -> None:
    assert TARGETS[""] == "esdc.storage.local:LocalTarget"
    assert TARGETS["*"] == "esdc.storage.object:ObjectTarget"
    register_target("MEM", "esdc.storage.local:LocalTarget")
    try:
        assert isinstance(resolve("mem://x/c.zarr"), LocalTarget)
    finally:
        del TARGETS["mem"]
    assert isinstance(resolve("mem://x/c.zarr"), ObjectTarget)


def test_storage_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESDC_STORAGE_OPTIONS", json.dumps({"anon": False, "key": "env"}))
    got = storage_options(["anon=true", 'client_kwargs={"region_name": "eu-central-1"}',
                           "endpoint_url=http://127.0.0.1:9000"], base={"key": "code"})
    assert got == {"anon": True, "key": "code", "endpoint_url": "http://127.0.0.1:9000",
                   "client_kwargs": {"region_name": "eu-central-1"}}
    with pytest.raises(StorageError, match="give KEY=VALUE"):
        storage_options(["no-equals-sign"])
    monkeypatch.setenv("ESDC_STORAGE_OPTIONS", "[1, 2]")
    with pytest.raises(StorageError, match="must be a JSON object"):
        storage_options()


def test_pairs_read_the_environment_for_urls_only(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("ESDC_STORAGE_OPTIONS", json.dumps({"anon": True}))
    cli = resolve("s3://b/c.zarr", pairs=["endpoint_url=http://127.0.0.1:1"])
    assert isinstance(cli, ObjectTarget)
    assert cli.options == {"anon": True, "endpoint_url": "http://127.0.0.1:1"}
    assert resolve("s3://b/c.zarr").options == {}  # Python callers pass options themselves
    monkeypatch.setenv("ESDC_STORAGE_OPTIONS", "not json")
    assert isinstance(resolve(tmp_path, pairs=[]), LocalTarget)  # a folder takes no options
    with pytest.raises(StorageError, match="ESDC_STORAGE_OPTIONS"):
        resolve("s3://b/c.zarr", pairs=[])


def test_target_is_abstract() -> None:
    with pytest.raises(TypeError):
        Target()  # type: ignore[abstract]
