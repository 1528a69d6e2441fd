"""Schemathesis against the OpenAPI schema: no generated request makes a
500.  (The cases are drawn with hypothesis directly: schemathesis' own
pytest plugin does not run under this pytest.)"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from gpubackfill.candles.synthetic import generate
from gpubackfill.serve.api import create_app
from gpubackfill.storage.clickhouse_store import SeriesKey


@pytest.fixture
def api_schema(service):
    service.ingest_table(SeriesKey("EURUSD", "M5"), generate("EURUSD", "M5", "2024-01-01", "2024-01-03"))
    service.create_job("EURUSD", "M5", "2024-01-01", "2024-01-02", chunk_size=200)
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(service))


def test_no_server_errors(api_schema):
    operations = [r.ok() for r in api_schema.get_all_operations()]
    labels = sorted(op.label for op in operations)
    assert len(labels) == 8, labels
    seen: dict[str, set[int]] = {}

    @hsettings(max_examples=150, deadline=None, derandomize=True, database=None,
               suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        op = data.draw(st.sampled_from(operations))
        case = data.draw(op.as_strategy())
        response = case.call()
        seen.setdefault(op.label, set()).add(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])

    check()
    assert set(seen) == set(labels)  # every operation was exercised
    assert all(code < 500 or code == 503 and "health" in op for op, codes in seen.items()
               for code in codes), seen
