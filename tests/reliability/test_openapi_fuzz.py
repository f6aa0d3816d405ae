"""Fuzzing the search API from its own OpenAPI document (schemathesis).

The FastAPI app of ``esdc serve`` (``create_app``) over a small embedded cube
(``make_embedded_cube``: 8 x 16 tiles of 16-d embeddings, flat index) is loaded
through schemathesis's ASGI loader; every operation of ``/openapi.json`` is called
with generated valid and invalid parameters and bodies. Checks: no answer is a
server error (5xx), the status code is one the document declares, the content type
is the declared one, and the body conforms to the declared schema.

Bounded: ``max_examples`` per operation and ``deadline=None``; the whole module takes
well under 60 s on 2 busy cores. ``derandomize=True`` keeps CI reproducible.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("faiss")
pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.search.conftest import make_embedded_cube  # noqa: E402

# A vector of 1e300 overflows float32 on its way to FAISS and is then refused (422):
# numpy's overflow warning on that cast is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

#: Valid requests: no 5xx, a declared status, content type and body schema.
POSITIVE = [not_a_server_error, status_code_conformance, content_type_conformance,
            response_schema_conformance]
#: Invalid requests: no 5xx, and rejected with a 4xx (schemathesis's
#: ``negative_data_rejection``). The status may be one the document does not list
#: (starlette answers 400 to a body that is not UTF-8), so ``status_code_conformance``
#: is left out; a documented status must still carry a conforming body.
NEGATIVE = [not_a_server_error, negative_data_rejection, content_type_conformance,
            response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from esdc.search.http import create_app

    cube: Path = make_embedded_cube(tmp_path_factory.mktemp("openapi-fuzz"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        return schemathesis.openapi.from_asgi("/openapi.json", create_app(cube))


def operations(api_schema: Any) -> list[Any]:
    return [r.ok() for r in api_schema.get_all_operations()]


# schemathesis's own pytest integration (``schemathesis.pytest.from_fixture``) fails
# under pytest 9 (it reads ``request.node._nodeid``); each operation's hypothesis
# strategy (``APIOperation.as_strategy``) is driven here instead. Every operation of
# the document is fuzzed, so routes added later are covered without editing this file.
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_api_conforms_to_its_openapi_document(api_schema: Any, mode: str) -> None:
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    checks = POSITIVE if mode == "positive" else NEGATIVE
    seen = 0
    for op in operations(api_schema):

        @settings(max_examples=50, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=generation))
        def fuzz(case: Any) -> None:
            nonlocal seen
            seen += 1
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Using `httpx` with")
                case.call_and_validate(checks=checks)

        try:
            fuzz()
        except Unsatisfiable:
            # Nothing invalid can be sent to an operation without parameters (/health).
            assert generation is GenerationMode.NEGATIVE and not op.query and not op.body \
                and not op.path_parameters, op.label
    assert seen >= 3 * 10, seen  # the operations got examples


def test_openapi_document_lists_every_route(api_schema: Any) -> None:
    ops = {(op.method.upper(), op.path) for op in operations(api_schema)}
    assert {("GET", "/health"), ("GET", "/search/tile"), ("POST", "/search/vector"),
            ("GET", "/tiles/{tile_y}/{tile_x}.png")} <= ops
