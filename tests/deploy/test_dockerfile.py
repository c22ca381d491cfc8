"""The Airflow image's Dockerfile: hadolint clean, plus what the image must contain.

No Docker engine runs on the development machines: the image is built in GitHub Actions.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .conftest import COMPOSE_DIR, WORKFLOWS_DIR

DOCKERFILE = COMPOSE_DIR / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    proc = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_base_images_are_pinned() -> None:
    args = dict(a.split("=", 1) for kind, a in _instructions() if kind == "ARG" and "IMAGE=" in a)
    assert args["AIRFLOW_IMAGE"] == "apache/airflow:3.3.2-python3.11"
    assert args["JAVA_IMAGE"].startswith("eclipse-temurin:17-")
    assert all(":" in v and not v.endswith(":latest") for v in args.values())


def test_image_has_java_17_raw2gold_and_baked_jars() -> None:
    ins = _instructions()
    env = " ".join(a for k, a in ins if k == "ENV")
    assert "JAVA_HOME=/opt/java/openjdk" in env
    assert "RAW2GOLD_IVY_DIR=/opt/raw2gold/ivy" in env
    assert "AIRFLOW__CORE__LOAD_EXAMPLES=False" in env
    runs = [a for k, a in ins if k == "RUN"]
    assert any("python -m raw2gold.transform.jars" in r for r in runs)
    assert any("--require-hashes -r /tmp/dist/requirements.txt" in r for r in runs)
    assert any("uv export --frozen --no-dev" in r for r in runs)
    # raw2gold's DAG files, from the installed package, land in the DAGs folder.
    assert any("/dags/raw2gold_*.py" in r and "/opt/raw2gold/dags/" in r for r in runs)


def test_modules_the_image_runs_exist() -> None:
    src = COMPOSE_DIR.parents[1] / "src" / "raw2gold"
    assert (src / "transform" / "jars.py").is_file()
    dag_files = sorted(p.name for p in (src / "orchestrate" / "dags").glob("raw2gold_*.py"))
    assert dag_files == ["raw2gold_dags.py", "raw2gold_pipeline_problems.py"]


def test_final_user_is_not_root() -> None:
    users = [a for k, a in _instructions() if k == "USER"]
    assert users[-1] == "50000"


def test_uv_version_matches_the_workflows() -> None:
    pinned = re.search(r"UV_VERSION=(\S+)", DOCKERFILE.read_text())
    assert pinned
    for wf in WORKFLOWS_DIR.glob("*.yml"):
        found = re.search(r'UV_VERSION: "([^"]+)"', wf.read_text())
        assert found and found.group(1) == pinned.group(1), wf.name


def test_build_context_is_restricted() -> None:
    ignore = (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore  # everything excluded, then only what the build needs
    assert "!src/" in ignore and "!uv.lock" in ignore


def test_helper_scripts_are_valid_bash() -> None:
    for script in [*(COMPOSE_DIR / "bin").iterdir(), COMPOSE_DIR / "init-secrets.sh"]:
        subprocess.run(["bash", "-n", str(script)], check=True)
