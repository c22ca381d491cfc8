"""Config validation: good files load, bad files report every problem with its line and a hint."""

from pathlib import Path

import pytest

from raw2gold.cli import main
from raw2gold.config import ConfigError, gold_order, load_pipeline, model_refs

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
