"""Shared fixtures. Fixtures that start servers or JVMs live in tests/fixtures/, one module each."""

pytest_plugins = [
    "tests.fixtures.paths",
    "tests.fixtures.spark",
    "tests.fixtures.servers",
    "tests.fixtures.airflow",
    "tests.fixtures.airbyte_api",
    "tests.fixtures.cluster",
]
