"""Install Airbyte connectors from PyPI, each into its own cached venv.

```
$RAW2GOLD_CACHE_DIR/connectors/<package>-<version>/      a venv (default ~/.cache/raw2gold)
$RAW2GOLD_CACHE_DIR/connectors/<package>-<version>.lock  flock held while installing
<venv>/.raw2gold-installed                              marker, written last
```

A venv without the marker is a broken or interrupted install: it is removed and installed again.
Connectors never go into the project's own venv (their pins clash with Airflow's).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raw2gold.cache import cache_dir
from raw2gold.config.models import ConnectorSpec
from raw2gold.errors import Raw2GoldError
from raw2gold.file_lock import file_lock

logger = logging.getLogger("raw2gold.ingest")

MARKER = ".raw2gold-installed"
INSTALL_TIMEOUT_SECONDS = 900


class ConnectorInstallError(Raw2GoldError):
    """The connector could not be installed (one line, with the installer's last words)."""


def uv_command() -> list[str]:
    """How to run uv: next to this interpreter, on PATH, or as ``python -m uv``."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("uv")
    if found:
        return [found]
    return [sys.executable, "-m", "uv"]


@dataclass(frozen=True)
class InstalledConnector:
    """A connector ready to run: its venv and the command line prefix that starts it."""

    spec: ConnectorSpec
    venv: Path

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / self.spec.command

    def argv(self) -> list[str]:
        """The command (without the Airbyte verb) that runs this connector."""
        return [str(self.executable)]


def venv_dir(spec: ConnectorSpec, root: Path | None = None) -> Path:
    """Where the venv of ``package==version`` lives."""
    name = f"{spec.package}-{spec.version}".replace("/", "_")
    return (root or cache_dir()) / "connectors" / name


def _run_installer(argv: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit code {result.returncode}"
        raise ConnectorInstallError(
            f"installing {what} failed: {last} (hint: check the package name and pinned version "
            f"on PyPI, and that the package index is reachable)"
        )


def install_connector(spec: ConnectorSpec, root: Path | None = None) -> InstalledConnector:
    """Install ``spec.package==spec.version`` into its own cached venv (once) and return it.

    Safe to call from parallel processes: the install runs under an exclusive file lock and the
    marker file is written last, so a venv is used only when it is complete.
    """
    venv = venv_dir(spec, root)
    installed = InstalledConnector(spec, venv)
    if (venv / MARKER).is_file():
        return installed
    with file_lock(venv.with_name(venv.name + ".lock")):
        if (venv / MARKER).is_file():  # another process finished it while we waited
            return installed
        if venv.exists():
            shutil.rmtree(venv)
        started = time.monotonic()
        what = f"{spec.package}=={spec.version}"
        logger.info("installing connector %s into %s", what, venv)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        python = os.environ.get("RAW2GOLD_CONNECTOR_PYTHON", sys.executable)
        uv = uv_command()
        try:
            _run_installer([*uv, "venv", "--quiet", "--python", python, str(venv)], env, what)
            # Bytecode is compiled at install: this machine sets PYTHONDONTWRITEBYTECODE, and a
            # connector without .pyc files takes ~7 s instead of ~2.5 s to start.
            _run_installer(
                [
                    *uv,
                    "pip",
                    "install",
                    "--quiet",
                    "--compile-bytecode",
                    "--python",
                    str(venv / "bin" / "python"),
                    what,
                ],
                env,
                what,
            )
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        if not installed.executable.is_file():
            shutil.rmtree(venv, ignore_errors=True)
            raise ConnectorInstallError(
                f"{what} has no console script {spec.command!r} (hint: set connector.entrypoint)"
            )
        marker: dict[str, Any] = {
            "package": spec.package,
            "version": spec.version,
            "python": python,
            "seconds": round(time.monotonic() - started, 1),
        }
        (venv / MARKER).write_text(json.dumps(marker))
        logger.info("installed %s in %.1f s", what, marker["seconds"])
    return installed


def load_manifest(spec: ConnectorSpec, base_dir: Path) -> dict[str, Any] | None:
    """The low-code manifest (parsed YAML) of a declarative source, or None."""
    if not spec.manifest:
        return None
    path = Path(spec.manifest)
    if not path.is_absolute():
        path = base_dir / path
    manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict):
        raise ValueError(f"manifest {path} is not a YAML mapping")
    return manifest
