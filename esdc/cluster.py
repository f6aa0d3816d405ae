"""The Dask cluster esdc computes on: a running scheduler, or a LocalCluster."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from esdc.errors import EsdcError

__all__ = ["WORKER_ENV", "dask_client", "worker_env"]

#: Environment of the LocalCluster's worker processes (a variable set by the user wins).
#: GDAL's raster block cache (default: 5 % of the machine's memory) kept the decoded
#: blocks of every GeoTIFF strip a worker had read, 0.95 GB of the Köppen map per worker,
#: although a build reads each strip once: 64 MB holds a strip's boundary blocks.
WORKER_ENV = {"GDAL_CACHEMAX": "64"}


def worker_env() -> dict[str, str]:
    """:data:`WORKER_ENV`, with the values already set in this process's environment.

    Returns
    -------
    dict
        ``{name: value}`` for ``distributed.LocalCluster(env=...)``.
    """
    return {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}


@contextlib.contextmanager
def dask_client(scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for the block; closed (with its LocalCluster) afterwards.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://HOST:PORT``; dask-jobqueue,
        dask-kubernetes and dask-gateway clusters give one). Without it a LocalCluster
        of 2 single-threaded worker processes is started on 127.0.0.1 with its
        dashboard on a free port (``client.dashboard_link``), their environment
        :func:`worker_env`.

    Yields
    ------
    distributed.Client

    Raises
    ------
    EsdcError
        If the scheduler does not answer within 10 s.
    """
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise EsdcError(f"scheduler={scheduler}: cannot connect ({exc}); check the "
                            "address (tcp://HOST:PORT) and that the scheduler runs.") from None
    else:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address="127.0.0.1:0", host="127.0.0.1",
                               env=worker_env())
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
