"""Embedded Airbyte connectors: install from PyPI, run the CLI, land raw Parquet, commit a manifest.

See :mod:`raw2gold.ingest.runner` for the run contract and :mod:`raw2gold.ingest.raw_writer` for
the raw file layout and columns.
"""

from raw2gold.ingest.connectors import (
    ConnectorInstallError,
    InstalledConnector,
    cache_dir,
    install_connector,
)
from raw2gold.ingest.protocol import ConnectorError, ConnectorProcess, terminate_all
from raw2gold.ingest.runner import (
    check_source,
    configured_catalog,
    discover_source,
    ingest_source,
    prepare_source,
    spec_source,
)

__all__ = [
    "ConnectorError",
    "ConnectorInstallError",
    "ConnectorProcess",
    "InstalledConnector",
    "cache_dir",
    "check_source",
    "configured_catalog",
    "discover_source",
    "ingest_source",
    "install_connector",
    "prepare_source",
    "spec_source",
    "terminate_all",
]
