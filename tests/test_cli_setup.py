"""Set-up paths a newcomer meets first: `raw2gold init`, and the Makefile's Java check."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from raw2gold.config import load_pipeline
from tests.fixtures.paths import REPO as ROOT

RAW2GOLD = [sys.executable, "-m", "raw2gold.cli"]


def test_init_copies_the_example_and_it_validates(tmp_path: Path) -> None:
    target = tmp_path / "my-pipeline"
    made = subprocess.run([*RAW2GOLD, "init", str(target)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert (target / "pipeline.yaml").is_file()
    assert not (target / "lake").exists()
    checked = subprocess.run(
        [*RAW2GOLD, "validate", str(target / "pipeline.yaml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    again = subprocess.run([*RAW2GOLD, "init", str(target)], capture_output=True, text=True)
    assert again.returncode == 1
    assert "is not empty" in again.stderr and len(again.stderr.strip().splitlines()) == 1

    # Named after its folder (two pipelines named shop would be one DAG), its path quoted.
    assert load_pipeline(target / "pipeline.yaml").name == "my_pipeline"
    spaced = tmp_path / "2nd Pipeline"
    made = subprocess.run([*RAW2GOLD, "init", str(spaced)], capture_output=True, text=True)
    assert load_pipeline(spaced / "pipeline.yaml").name == "pipeline_2nd_pipeline"
    quoted = shlex.quote(str(spaced / "pipeline.yaml"))
    assert f"next: raw2gold validate {quoted} && raw2gold run {quoted}" in made.stdout


def test_check_java_passes_here_and_names_the_fix_without_java(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "check-java.sh"
    assert subprocess.run([str(script)], capture_output=True).returncode == 0
    # A PATH with bash and sed but no java, and no JAVA_HOME: one line naming the fix.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sed", "head"):
        found = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        os.symlink(found, bin_dir / tool)
    env = {"PATH": str(bin_dir)}
    missing = subprocess.run(
        [str(bin_dir / "bash"), str(script)], capture_output=True, text=True, env=env
    )
    assert missing.returncode == 1
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "Java not found" in lines[0] and "openjdk-17-jre-headless" in lines[0]
    # A Java of the wrong version: named, with the fix.
    fake_home = tmp_path / "jdk8"
    (fake_home / "bin").mkdir(parents=True)
    fake_java = fake_home / "bin" / "java"
    fake_java.write_text("#!/bin/sh\necho 'openjdk version \"1.8.0_392\"' >&2\n")
    fake_java.chmod(0o755)
    old = subprocess.run(
        [str(bin_dir / "bash"), str(script)],
        capture_output=True,
        text=True,
        env={**env, "JAVA_HOME": str(fake_home)},
    )
    assert old.returncode == 1
    assert old.stderr.startswith("raw2gold: Java 8 found at ")
    assert "needs Java 17 or 21" in old.stderr and len(old.stderr.strip().splitlines()) == 1
