"""Shared fixtures. Fixtures that start servers or JVMs live in tests/fixtures/, one module each."""

import os

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
