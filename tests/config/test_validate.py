"""Config validation: good files load, bad files report every problem with its line and a hint."""

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from raw2gold.cli import main
from raw2gold.config import ConfigError, gold_order, load_pipeline, model_refs
from raw2gold.config.models import AIRFLOW_PRESETS
from raw2gold.orchestrate.dag_factory import build_dag

GOOD_SOURCE = """
sources:
  faker:
    connector: {package: airbyte-source-faker, version: 7.2.1}
    streams:
      - {name: users, sync_mode: incremental, cursor_field: [updated_at], primary_key: [id]}
"""


def write(tmp_path: Path, text: str, models: dict[str, str] | None = None) -> Path:
    for name, body in (models or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    return [str(p) for p in info.value.problems]


def test_shop_example_is_valid(shop_pipeline: Path) -> None:
    config = load_pipeline(shop_pipeline)
    assert config.name == "shop"
    assert set(config.sources) == {"faker", "catalog_csv"}
    assert set(config.processed) == {"users", "products", "purchases", "make_categories"}
    assert config.gold["customer_lifetime_value"].format == "parquet"
    assert config.lake.uri == str(shop_pipeline.parent / "lake")
    assert model_refs(config, "top_products") == ["make_categories", "products", "purchases"]
    assert set(gold_order(config)) == set(config.gold)


def test_lake_override_is_resolved_against_cwd(shop_pipeline: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_pipeline(shop_pipeline, lake_uri="lake").lake.uri == str(tmp_path / "lake")
    monkeypatch.setenv("RAW2GOLD_LAKE_URI", "s3://bucket/prefix")
    assert load_pipeline(shop_pipeline).lake.uri == "s3://bucket/prefix"


def test_every_problem_is_reported_with_line_and_hint(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """name: shop
lake:
  uri: ./lake
  s3: {secret_key: "plain-text-secret"}
sources:
  faker:
    connector: {package: airbyte-source-faker, version: 7.2.1}
    streams:
      - {name: users, sync_mode: incremental, cursor_field: [updated_at]}
processed:
  users:
    source: faker.userz
    primary_key: [id]
    columns: {id: bigint, name: strin}
  accounts:
    source: nosuch.users
    primary_key: [id]
    columns: {id: bigint}
gold:
  a:
    sql: models/a.sql
    colour: blue
  b:
    sql: models/b.sql
  c:
    sql: models/c.sql
  d:
    sql: models/missing.sql
""",
        {
            "models/a.sql": "select 1",
            "models/b.sql": "select * from {{ ref('c') }} join {{ ref('nope') }}",
            "models/c.sql": "select * from {{ ref('b') }}",
        },
    )
    problems = problems_of(path)
    text = "\n".join(problems)
    assert f"{path}:4: lake.s3.secret_key: credentials are never written inline" in text
    assert f"{path}:14: processed.users.columns: unknown Spark SQL type for name: strin" in text
    assert f"{path}:16: processed.accounts.source: source 'nosuch' does not exist" in text
    assert f"{path}:22: gold.a.colour: unknown key 'colour'" in text
    assert "refers to table 'nope', which does not exist" in text
    assert "models form a cycle" in text
    assert f"{path}:28: gold.d.sql: SQL file models/missing.sql not found" in text
    assert all("hint:" in p for p in problems if "unknown key" in p or "not found" in p)
    assert len(problems) == 7


def test_a_credential_inline_in_a_source_config_is_refused_with_its_line(tmp_path: Path) -> None:
    """Credentials never sit in pipeline.yaml: a connector config key naming a password, token
    or key must hold an ${ENV} reference (masked in logs); paths and URLs under such keys and
    referenced values pass."""
    path = write(
        tmp_path,
        """name: p
sources:
  api:
    connector: {package: airbyte-source-declarative-manifest, version: 6.0.0}
    config:
      api_key: ${API_KEY}
      token_url: https://example.com/oauth/token
      api_key_header: X-Api-Key
      private_key_path: ${PIPELINE_DIR}/key.pem
      credentials:
        client_secret: "s3cr3t-value"
        password: "Bearer ${TOKEN}"
      headers:
        - {name: X-Api-Token, token: abc123}
    streams:
      - {name: users}
""",
    )
    problems = problems_of(path)
    assert problems == [
        f"{path}:11: sources.api.config.credentials.client_secret: a credential is written "
        "inline (it would sit in the file, the DAG and the logs) (hint: use an environment "
        "reference such as ${CLIENT_SECRET}, masked in logs)",
        f"{path}:14: sources.api.config.headers.0.token: a credential is written inline (it "
        "would sit in the file, the DAG and the logs) (hint: use an environment reference such "
        "as ${TOKEN}, masked in logs)",
    ]


def test_missing_stream_and_bad_check(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "name: p\n"
        + GOOD_SOURCE
        + """processed:
  users:
    source: faker.userz
    primary_key: [id]
    columns: {id: bigint}
    checks:
      - {type: relationships, columns: [id], to: ghosts.id}
      - {type: accepted_values, columns: [id]}
""",
    )
    text = "\n".join(problems_of(path))
    assert "source 'faker' has no stream 'userz' (hint: its streams: users)" in text
    assert "check accepted_values needs one column and values" in text


def test_a_declared_column_name_delta_refuses_names_the_one_to_declare(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "name: p\n"
        + GOOD_SOURCE
        + """processed:
  users:
    source: faker.users
    primary_key: [id]
    columns: {id: bigint, "Unit Price": "decimal(10,2)", "Size (cm)": int}
""",
    )
    (problem,) = problems_of(path)
    assert problem == (
        f"{path}:12: processed.users.columns: columns 'Unit Price', 'Size (cm)': Delta refuses "
        "spaces and ',;{}()=' in column names, so processed names such a raw column with _ in "
        "their place; declare Unit_Price, Size__cm_"
    )


def test_schedule_timezone_and_start_date_are_checked_with_their_lines(tmp_path: Path) -> None:
    """A schedule, time zone or start date Airflow cannot take is a validation problem with its
    line (validate passed them; Airflow found out only when it imported the DAG file, and an
    unquoted 2026-13-01 crashed the YAML parser); an unquoted YAML date is a start date."""
    pipeline = "name: p\n" + GOOD_SOURCE + "orchestration:\n"
    path = write(
        tmp_path,
        pipeline
        + "  schedule: every day at 5\n  timezone: Mars/Olympus\n  start_date: 2026-13-01\n",
    )
    assert problems_of(path) == [
        f"{path}:9: orchestration.schedule: schedule 'every day at 5' is not a cron expression "
        "of 5 fields (minute hour day month weekday: '0 5 * * *' is 05:00 every day) or a "
        "preset (@hourly, @daily, @weekly, @monthly, @quarterly, @yearly, @once, @continuous); "
        "null for manual runs only",
        f"{path}:10: orchestration.timezone: unknown time zone 'Mars/Olympus': give an IANA name "
        "such as UTC or Europe/Madrid",
        f"{path}:11: orchestration.start_date: start_date '2026-13-01' is not a date: give "
        "YYYY-MM-DD or an ISO 8601 date-time (2026-01-01T05:00)",
    ]
    path = write(tmp_path, pipeline + "  schedule: '0 0 5 * * *'\n")
    (problem,) = problems_of(path)
    assert "schedule '0 0 5 * * *' has 6 fields: give a cron expression of 5 fields" in problem
    for schedule in ["'30 5 * * 1-5'", "'@quarterly'", "'@continuous'", "null"]:
        path = write(
            tmp_path,
            pipeline + f"  schedule: {schedule}\n  timezone: Europe/Madrid\n"
            "  start_date: 2026-03-01\n",
        )
        orchestration = load_pipeline(path).orchestration
        assert orchestration.start_date == "2026-03-01"
        madrid = datetime(2026, 3, 1, tzinfo=ZoneInfo("Europe/Madrid"))
        assert build_dag(load_pipeline(path)).start_date == madrid


def test_dates_in_a_connector_config_reach_it_as_written(tmp_path: Path) -> None:
    """YAML would read an unquoted 2024-01-01T00:00:00Z as a datetime, which the connector's
    JSON config then carried as 2024-01-01T00:00:00+00:00 (refused by connectors whose spec
    pattern ends in Z)."""
    source = GOOD_SOURCE.replace(
        "    streams:",
        "    config: {start_date: 2024-01-01T00:00:00Z, end: 2024-02-01}\n    streams:",
    )
    config = load_pipeline(write(tmp_path, "name: p\n" + source))
    assert config.sources["faker"].config == {
        "start_date": "2024-01-01T00:00:00Z",
        "end": "2024-02-01",
    }


def test_a_stream_name_with_dots_is_referred_to_after_its_source(tmp_path: Path) -> None:
    """Sheet tabs and files name streams such as `prices.v2`: `csv.prices.v2` is that stream
    of source csv (source names have no dots); it was refused as not <source>.<stream>."""
    source = GOOD_SOURCE.replace("{name: users,", "{name: users.v2,")
    processed = (
        "processed:\n  users:\n    source: faker.users.v2\n    primary_key: [id]\n"
        "    cursor: updated_at\n    columns: {id: bigint, updated_at: timestamp}\n"
    )
    config = load_pipeline(write(tmp_path, "name: p\n" + source + processed))
    assert config.processed["users"].source == "faker.users.v2"
    path = write(tmp_path, "name: p\n" + source + processed.replace("faker.users.v2", "faker."))
    (problem,) = problems_of(path)
    assert "source must be <source>.<stream>" in problem


def test_the_cron_presets_are_airflows() -> None:
    from airflow.sdk.definitions.timetables._cron import CRON_PRESETS

    assert AIRFLOW_PRESETS == CRON_PRESETS


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: p\nsources:\n  faker: [unclosed\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:") and "YAML syntax error" in problem


def test_cli_validate_exit_codes(tmp_path: Path, shop_pipeline: Path, capsys) -> None:
    assert main(["validate", str(shop_pipeline)]) == 0
    assert "pipeline 'shop'" in capsys.readouterr().out
    bad = write(tmp_path, "name: p\nsources: {}\nextra_key: 1\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'extra_key'" in err and "problem(s) found" in err
    assert "Traceback" not in err
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


@pytest.mark.parametrize("stream", ["../escape", "a//b", "./x", "a\\\\b", "_runs", "_runs/x"])
def test_a_stream_name_that_would_leave_its_raw_folder_is_refused(
    tmp_path: Path, stream: str
) -> None:
    """Raw files go to raw/<source>/<stream>/: a stream named `../escape` landed its files in
    raw/escape/ (another source's folder), and `_runs` shared the run manifests' folder."""
    source = GOOD_SOURCE.replace("{name: users,", f'{{name: "{stream}",')
    (problem,) = problems_of(write(tmp_path, "name: p\n" + source))
    unquoted = stream.replace("\\\\", "\\")
    assert problem.startswith(f"{tmp_path}/pipeline.yaml:7: sources.faker.streams.0.name: stream ")
    assert repr(unquoted) in problem
    kept = GOOD_SOURCE.replace("{name: users,", '{name: "Sales 2024/Q1 #1",')
    assert load_pipeline(write(tmp_path, "name: p\n" + kept)).sources["faker"].streams[0].name
