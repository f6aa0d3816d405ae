"""Storage of cubes: targets (a folder, an object store), journaled writes, checksums.

A path or URL enters esdc once, through :func:`resolve`, and becomes a
:class:`~esdc.storage.target.Target`; everything after asks the target, never "is this
a URL?". Modules, leaves first::

    codecs, integrity, fingerprint, journal    chunk decoding errors, checksum record,
                                               build fingerprint, partial build + commit
    shards, icechunk_format                    Zarr v3 sharding (shard files, the chunks
                                               in them); a repository's format version
    regions, append -> write                   layout and the journaled local write
    target -> local -> object                  the interface, a folder, an object store
    target -> icechunk                         a versioned Icechunk repository (imported
                                               when used: ``STORES``, ``icechunk+s3://``)

:func:`open_cube` opens a cube from a path, URL or target;
``esdc.verify.verify_store`` checks one.
"""

from esdc.storage.integrity import ChecksumReport
from esdc.storage.journal import partial_path
from esdc.storage.local import LocalTarget
from esdc.storage.object import ObjectTarget, staging_path
from esdc.storage.regions import encoding
from esdc.storage.target import (
    STORES,
    TARGETS,
    Target,
    check_checksums,
    is_url,
    open_cube,
    register_target,
    resolve,
    storage_options,
    verify_checksums,
)

__all__ = [
    "STORES",
    "TARGETS",
    "ChecksumReport",
    "LocalTarget",
    "ObjectTarget",
    "Target",
    "check_checksums",
    "encoding",
    "is_url",
    "open_cube",
    "partial_path",
    "register_target",
    "resolve",
    "staging_path",
    "storage_options",
    "verify_checksums",
]
