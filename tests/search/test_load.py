"""A bounded load test of `esdc serve` with an index swap in the middle (no timing asserts).

The load test of ``benchmarks/bench_load.py`` at a small size: 2,000 requests (tile,
tile + bbox, vector and PNG) from 32 concurrent keep-alive clients on 127.0.0.1 against
``esdc serve`` in its own process, the index rebuilt from another encoder's embeddings
when half are answered. Every answer must be 200 and byte-for-byte the answer of the
index generation its ``X-Esdc-Index`` header names.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("fastapi")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_load  # noqa: E402  (benchmarks/bench_load.py)


def test_2000_requests_at_32_clients_with_a_swap(tmp_path):
    res = bench_load.run(requests=2000, clients=32, swaps=1, pool_size=200,
                         shape=(128, 256), dim=16, watch=0.2, work=tmp_path)
    assert res["server_errors"] == 0, res["examples"]
    assert res["failed"] == 0, res["examples"]
    assert res["mixed"] == 0 and res["unknown_index"] == 0, res["examples"]
    assert sum(res["by_index"].values()) == 2000
    assert sum(v["count"] for v in res["by_kind"].values()) == 2000
    assert all(v["count"] > 0 for v in res["by_kind"].values())  # every kind was sent
    for key in ("p50_ms", "p99_ms", "requests_per_s"):
        assert math.isfinite(res[key]) and res[key] > 0
    # the rebuild happened while the clients ran and the server moved to it
    (swap,) = res["swaps"]
    assert swap["to"] == "B" and swap["failed_during"] == 0
    assert res["health_after"]["generation"] == swap["generation"]
    assert res["health_after"]["reload_error"] is None


def test_check_counts_failed_mixed_and_unknown_answers():
    """The checker of the load test tells each kind of bad answer apart."""
    A, Ld = bench_load.Answer, bench_load.Load
    expected = {"aaaa": ["d0", "d1"], "bbbb": ["e0", "e1"]}
    answers = [A(0, 200, "1-aaaa", "d0"), A(1, 200, "2-bbbb", "e1"),  # good
               A(1, 200, "1-aaaa", "e1"),  # B's answer under A's header: mixed
               A(0, 200, "9-cccc", "d0"),  # an index nobody built
               A(0, 500, "1-aaaa", "x", error="500"), A(1, 0, "", "", error="reset"),
               A(0, 422, "1-aaaa", "x", error="422")]
    res = bench_load.check(Ld(answers), expected)
    assert (res["failed"], res["server_errors"], res["mixed"], res["unknown_index"]) == (
        3, 2, 1, 1)
    assert res["by_index"]["1-aaaa"] == 4 and len(res["examples"]) == 5
