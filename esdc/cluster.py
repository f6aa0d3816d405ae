"""The Dask cluster esdc computes on: a running scheduler, or a LocalCluster."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from esdc.errors import EsdcError

__all__ = ["WORKER_ENV", "WORKER_MALLOC", "dask_client", "local_cluster", "spawn_environ",
           "worker_env"]

#: Environment of the LocalCluster's worker processes (a variable set by the user wins).
#: GDAL's raster block cache (default: 5 % of the machine's memory) kept the decoded
#: blocks of every GeoTIFF strip a worker had read, 0.95 GB of the Köppen map per worker,
#: although a build reads each strip once: 64 MB holds a strip's boundary blocks.
WORKER_ENV = {"GDAL_CACHEMAX": "64"}

#: glibc's allocator in the LocalCluster's worker processes, set before they start
#: (``distributed.nanny.pre-spawn-environ``). distributed sets only
#: ``MALLOC_TRIM_THRESHOLD_=65536``, which also fixes the mmap threshold at 128 KiB: every
#: array above it (a chunk, a decoded strip, an encode buffer) is a fresh ``mmap``
#: whose pages are faulted in and zeroed, and unmapped when freed. Read + encode + store of
#: the Earth cube then costs 7.8 CPU s on 2 workers against 3.9 in threads of one
#: process (``benchmarks/README.md``, session 10). Here arrays under 8 MiB (a chunk of
#: the Earth recipe holds up to 14 MB) are reused from the heap, larger ones mapped and
#: returned when freed, and the heap is trimmed above 16 MiB free: the Earth build 1.3-1.5x
#: faster at every resolution, its peak RSS within the noise (32 / 64 MiB was as fast
#: but held 2.75 GB at 0.05 degree against 2.37).
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(8 << 20),
                 "MALLOC_TRIM_THRESHOLD_": str(16 << 20)}

#: distributed's default ``MALLOC_TRIM_THRESHOLD_`` (a different value is the user's own).
_DISTRIBUTED_TRIM = "65536"


def worker_env() -> dict[str, str]:
    """:data:`WORKER_ENV`, with the values already set in this process's environment.

    Returns
    -------
    dict
        ``{name: value}`` for ``distributed.LocalCluster(env=...)``.
    """
    return {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}


def spawn_environ() -> dict[str, str]:
    """The pre-spawn environment of distributed's nannies, :data:`WORKER_MALLOC` in it.

    A value the user set wins: in this process's environment, or as
    ``distributed.nanny.pre-spawn-environ`` other than distributed's default.

    Returns
    -------
    dict
        ``{name: value}`` for ``dask.config.set({"distributed.nanny.pre-spawn-environ":
        ...})`` around ``LocalCluster(...)`` (nannies read it when they are made).
    """
    import dask
    import distributed  # noqa: F401 - loads distributed's config defaults

    env = {k: str(v) for k, v in
           (dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}).items()}
    mine = env.get("MALLOC_TRIM_THRESHOLD_") not in (None, _DISTRIBUTED_TRIM) or any(
        k in env for k in WORKER_MALLOC if k != "MALLOC_TRIM_THRESHOLD_")
    if not mine:  # (a nanny copies its settings here too: distributed's default is not ours)
        env.update({k: os.environ[k] if os.environ.get(k, _DISTRIBUTED_TRIM) != _DISTRIBUTED_TRIM
                    else v for k, v in WORKER_MALLOC.items()})
    return env


def local_cluster(n_workers: int = 2, **kwargs: Any) -> Any:
    """The LocalCluster esdc starts: single-threaded worker processes on 127.0.0.1.

    Each worker gets :func:`worker_env` and the allocator of :func:`spawn_environ`; the
    dashboard listens on a free port (``cluster.dashboard_link``).

    Parameters
    ----------
    n_workers : int, default 2
        Worker processes, one thread each.
    **kwargs
        Further ``distributed.LocalCluster`` arguments (``silence_logs=...``).

    Returns
    -------
    distributed.LocalCluster
        Started; the caller closes it.
    """
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_environ()}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address="127.0.0.1:0", host="127.0.0.1",
                            env=worker_env(), **kwargs)


@contextlib.contextmanager
def dask_client(scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for the block; closed (with its LocalCluster) afterwards.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://HOST:PORT``; dask-jobqueue,
        dask-kubernetes and dask-gateway clusters give one). Without it a LocalCluster
        of 2 single-threaded worker processes is started on 127.0.0.1 with its
        dashboard on a free port (``client.dashboard_link``): :func:`local_cluster`.

    Yields
    ------
    distributed.Client

    Raises
    ------
    EsdcError
        If the scheduler does not answer within 10 s.
    """
    from distributed import Client

    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise EsdcError(f"scheduler={scheduler}: cannot connect ({exc}); check the "
                            "address (tcp://HOST:PORT) and that the scheduler runs.") from None
    else:
        cluster = local_cluster()
        client = Client(cluster)
    try:
        yield client
    finally:
        # The work is done (and written) by now: a slow shutdown on a busy machine must
        # not turn it into a failure. Workers still running are killed with the nanny.
        with contextlib.suppress(TimeoutError, OSError):
            client.close(timeout=30)
        if cluster is not None:
            with contextlib.suppress(TimeoutError, OSError):
                cluster.close(timeout=30)
