"""The compose file: the Compose Specification schema, plus binds, secrets and Airflow settings.

The schema is the compose-spec JSON schema vendored by the check-jsonschema package (pinned in
the `deploy` dependency group), read from its installed files: nothing is fetched.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from .conftest import COMPOSE_DIR

COMPOSE = COMPOSE_DIR / "compose.yaml"
AIRFLOW_SERVICES = {"airflow-init", "api-server", "scheduler", "dag-processor", "triggerer"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    assert isinstance(schema, dict)
    return schema


def _validator(schema: dict[str, Any]) -> Any:
    """A validator for the schema's own draft (the vendored schema declares it)."""
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = _compose_schema()
    validator = _validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_schema_catches_a_broken_file(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["scheduler"]["restart_policy"] = "always"  # not a compose key
    assert list(_validator(_compose_schema()).iter_errors(broken))


def test_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == AIRFLOW_SERVICES | {"postgres", "spark-master", "spark-worker"}
    for name in ("spark-master", "spark-worker"):
        assert services[name]["profiles"] == ["spark"]
    for name in AIRFLOW_SERVICES:
        assert services[name]["image"] == "${RAW2GOLD_IMAGE:-raw2gold-airflow:local}"
        assert services[name]["user"] == "50000:0"
    assert services["airflow-init"]["command"] == ["airflow", "db", "migrate"]
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        deps = services[name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == "service_healthy"


def test_airflow_settings(compose: dict[str, Any]) -> None:
    env = compose["services"]["scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__SECRETS__BACKEND"] == (
        "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
    )
    kwargs = json.loads(env["AIRFLOW__SECRETS__BACKEND_KWARGS"])
    assert kwargs["connections_prefix"] == "raw2gold/connections"
    assert kwargs["variables_prefix"] == "raw2gold/variables"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/raw2gold/dags"
    assert env["RAW2GOLD_PIPELINES"] == "/opt/raw2gold/pipelines/*/pipeline.yaml"
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env  # only the _CMD form
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"] == "/opt/raw2gold/bin/raw2gold-db-url"
    for key in ("FERNET_KEY", "JWT_SECRET", "SECRET_KEY"):
        cmd = next(v for k, v in env.items() if k.endswith(f"__{key}_CMD"))
        assert cmd.startswith("cat /run/secrets/")


def test_no_secret_values_in_compose(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|_KEY", key) and "BACKEND" not in key:
                assert key.endswith(("_FILE", "_CMD")), f"{name}: {key} holds a value"
                assert "/run/secrets/" in str(value) or str(value).startswith("/opt/raw2gold/bin")
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    gitignore = (COMPOSE_DIR / ".gitignore").read_text().split()
    assert "secrets/" in gitignore


def test_published_ports_bind_loopback_or_a_chosen_address(compose: dict[str, Any]) -> None:
    published = {}
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, str), f"{name}: use the string form with a host IP"
            host_ip, _, _ = port.rsplit(":", 2)
            assert host_ip in ("127.0.0.1", "${AIRFLOW_UI_BIND:-127.0.0.1}"), port
            published[name] = port
    assert set(published) == {"api-server", "spark-master"}
    assert "ports" not in compose["services"]["postgres"]


def test_container_internal_binds_are_documented(compose: dict[str, Any]) -> None:
    header = COMPOSE.read_text().split("name: raw2gold")[0]
    assert "all of the container's" in header and "none of those ports is published" in header
    cmd = compose["services"]["api-server"]["command"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"  # inside the container only
    for name in ("scheduler", "triggerer"):
        assert "--skip-serve-logs" in compose["services"][name]["command"]


def test_init_secrets_creates_private_reusable_files(tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        raise AssertionError("openssl is required by init-secrets.sh")
    script = tmp_path / "init-secrets.sh"
    shutil.copy(COMPOSE_DIR / "init-secrets.sh", script)
    subprocess.run(["bash", str(script)], check=True, capture_output=True)
    secrets = tmp_path / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    names = {p.name for p in secrets.iterdir()}
    assert names == set(yaml.safe_load(COMPOSE.read_text())["secrets"])
    fernet = (secrets / "airflow_fernet_key").read_text()
    assert len(base64.urlsafe_b64decode(fernet)) == 32
    before = {p.name: p.read_text() for p in secrets.iterdir()}
    subprocess.run(["bash", str(script)], check=True, capture_output=True)
    assert before == {p.name: p.read_text() for p in secrets.iterdir()}
    assert (tmp_path / "dags").is_dir() and (tmp_path / "pipelines").is_dir()


def test_db_url_script_reads_the_password_file(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cr3t")
    out = subprocess.run(
        [str(COMPOSE_DIR / "bin" / "raw2gold-db-url")],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "RAW2GOLD_DB_PASSWORD_FILE": str(pw)},
    ).stdout
    assert out.strip() == "postgresql+psycopg2://airflow:s3cr3t@postgres:5432/airflow"


def test_user_data_embeds_the_same_compose_and_is_valid_bash(tmp_path: Path) -> None:
    from raw2gold_infra import user_data

    text = user_data.render(
        bucket="lake-bucket",
        region="eu-west-1",
        registry="123.dkr.ecr.eu-west-1.amazonaws.com",
        image_uri="123.dkr.ecr.eu-west-1.amazonaws.com/raw2gold-airflow:v1",
        ui_on_private_ip=False,
    )
    script = tmp_path / "user-data.sh"
    script.write_text(text)
    subprocess.run(["bash", "-n", str(script)], check=True)
    embedded = text.split("cat > /opt/raw2gold/compose.yaml <<'RAW2GOLD_EOF'\n", 1)[1]
    embedded = embedded.split("\nRAW2GOLD_EOF\n", 1)[0]
    assert yaml.safe_load(embedded) == yaml.safe_load(COMPOSE.read_text())
    assert "uri: s3://lake-bucket/" in text and "region: eu-west-1" in text
    assert len(text.encode()) < user_data.USER_DATA_LIMIT - 500
