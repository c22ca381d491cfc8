"""Pinned external linters the deployment tests run, installed on demand into a cache.

checkov pins dependencies that clash with Apache Airflow's, so it runs from its own uv tool
environment; actionlint is a Go program, built with the Go toolchain from the Go module proxy.
Both land under ~/.cache/raw2gold/tools (override with RAW2GOLD_TOOLS_DIR).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from raw2gold.ingest.connectors import uv_command

CHECKOV_VERSION = "3.3.30"
ACTIONLINT_VERSION = "v1.7.12"


def tools_dir() -> Path:
    """Where the tools are cached."""
    default = Path.home() / ".cache" / "raw2gold" / "tools"
    path = Path(os.environ.get("RAW2GOLD_TOOLS_DIR", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _need(program: str) -> str:
    """Absolute path of a program on PATH, or a clear error."""
    found = shutil.which(program)
    if not found:
        raise RuntimeError(f"{program} is required on PATH to install the deployment linters")
    return found


def checkov_command() -> list[str]:
    """Command prefix running the pinned checkov in an isolated uv tool environment."""
    env_dir = tools_dir() / f"checkov-{CHECKOV_VERSION}"
    exe = env_dir / "bin" / "checkov"
    if not exe.exists():
        uv = uv_command()  # the project's own uv (dev group), not whatever is on PATH
        subprocess.run([*uv, "venv", "--quiet", "--python", "3.11", str(env_dir)], check=True)
        subprocess.run(
            [
                *uv,
                "pip",
                "install",
                "--quiet",
                "--python",
                str(env_dir / "bin" / "python"),
                f"checkov=={CHECKOV_VERSION}",
            ],
            check=True,
        )
    return [str(exe)]


def actionlint_command() -> list[str]:
    """Command prefix running the pinned actionlint, built with `go install` if missing."""
    bin_dir = tools_dir() / f"actionlint-{ACTIONLINT_VERSION}"
    exe = bin_dir / "actionlint"
    if not exe.exists():
        go = _need("go")
        env = {**os.environ, "GOBIN": str(bin_dir), "CGO_ENABLED": "0"}
        subprocess.run(
            [go, "install", f"github.com/rhysd/actionlint/cmd/actionlint@{ACTIONLINT_VERSION}"],
            check=True,
            env=env,
        )
    return [str(exe)]
