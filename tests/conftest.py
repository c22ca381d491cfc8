"""Shared fixtures. Fixtures that start servers or JVMs live in tests/fixtures/, one module each."""

import os

import pytest

# pytest-xdist sets COLUMNS in its workers (the controller terminal's width); the CLI's tables
# must come out in tests as they do in a log, whole, so the CLI must not see it.
os.environ.pop("COLUMNS", None)

pytest_plugins = [
    "tests.fixtures.paths",
    "tests.fixtures.spark",
    "tests.fixtures.servers",
    "tests.fixtures.airflow",
    "tests.fixtures.airbyte_api",
    "tests.fixtures.cluster",
]


@pytest.fixture
def without_table_leases(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn raw2gold's table leases off (src/raw2gold/lake/lease.py). Delta's transaction id
    guards a table behind the lease; the tests of that guard run a second writer inside the
    first one's write, in one thread, which the lease would keep waiting for ever. Without the
    lease is how two writers meet when one's lease expired while it stalled, or the store
    ignores conditional writes."""
    from contextlib import nullcontext

    from raw2gold.publish import publisher
    from raw2gold.transform import maintenance, processed

    for module in (processed, publisher, maintenance):
        monkeypatch.setattr(module, "table_lease", lambda *args, **kwargs: nullcontext())
