"""source-file 0.5.39 from PyPI on local CSV, JSONL and Parquet files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raw2gold.config import load_pipeline
from raw2gold.ingest import ConnectorError, check_source, ingest_source
from raw2gold.lake.layout import Lake
from tests.fixtures.paths import SHOP
from tests.fixtures.servers import HttpsFiles, S3Server, TlsFront
from tests.ingest.conftest import FILE, MakePipeline, read_raw

DAY = "2026-11-26"


def file_source(path: Path, fmt: str, name: str = "data") -> dict[str, Any]:
    config = {
        "dataset_name": name,
        "format": fmt,
        "url": str(path),
        "provider": {"storage": "local"},
    }
    return {"connector": FILE, "config": config, "streams": [{"name": name}]}


def test_shop_csv_with_pipeline_dir(tmp_path: Path) -> None:
    config = load_pipeline(SHOP, lake_uri=str(tmp_path / "lake"))
    manifest = ingest_source(config, "catalog_csv", "r1", DAY)
    stream = manifest["streams"]["make_categories"]
    with open(SHOP.parent / "data" / "make_categories.csv", newline="") as handle:
        expected = sorted((r["make"], r["category"], r["country"]) for r in csv.DictReader(handle))
    landed = sorted(
        (r["make"], r["category"], r["country"]) for r in read_raw(config, stream["files"])
    )
    assert landed == expected
    assert stream["records"] == len(expected) == 34
    assert stream["sync_mode"] == "full_refresh"
    assert manifest["state"] is None  # source-file sends no state
    assert Lake(config.lake).committed_raw_runs("catalog_csv")[0]["run_id"] == "r1"


def test_jsonl_nested_and_missing_keys(make_pipeline: MakePipeline, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    rows = []
    for i in range(1, 31):
        row: dict[str, Any] = {"id": i, "kind": "click", "payload": {"x": i}, "tags": ["t", i]}
        if i % 3 == 0:
            del row["kind"]  # optional key missing
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = make_pipeline({"events": file_source(path, "jsonl", "events")})
    manifest = ingest_source(config, "events", "r1", DAY)
    stream = manifest["streams"]["events"]
    assert stream["columns"] == {
        "id": "integer",
        "kind": "string",
        "payload": "json",
        "tags": "json",
    }
    landed = {r["id"]: r for r in read_raw(config, stream["files"])}
    assert len(landed) == 30 and stream["quarantined"] == 0
    for row in rows:
        got = landed[row["id"]]
        assert got["kind"] == row.get("kind")  # None where the key was missing
        assert json.loads(got["payload"]) == row["payload"]
        assert json.loads(got["tags"]) == row["tags"]


def test_parquet_file(make_pipeline: MakePipeline, tmp_path: Path) -> None:
    path = tmp_path / "prices.parquet"
    table = pa.table(
        {
            "sku": ["a", "b", "c"],
            "price": [1.25, None, 3.5],
            "qty": [1, 2, 3],
            "ok": [True, False, True],
        }
    )
    pq.write_table(table, path)
    config = make_pipeline({"prices": file_source(path, "parquet", "prices")})
    manifest = ingest_source(config, "prices", "r1", DAY)
    stream = manifest["streams"]["prices"]
    landed = sorted(
        (r["sku"], r["price"], r["qty"], r["ok"]) for r in read_raw(config, stream["files"])
    )
    assert landed == [("a", 1.25, 1, True), ("b", None, 2, False), ("c", 3.5, 3, True)]


def test_csv_type_violation_is_quarantined(make_pipeline: MakePipeline, tmp_path: Path) -> None:
    # source-file types a CSV from its first 10 000 rows; pandas reads the next chunk as strings.
    path = tmp_path / "big.csv"
    with open(path, "w") as handle:
        handle.write("id,amount\n")
        for i in range(1, 10_051):
            handle.write(f"{i},{'abc' if i == 10_030 else f'{i}.5'}\n")
    config = make_pipeline({"big": file_source(path, "csv", "big")})
    manifest = ingest_source(config, "big", "r1", DAY)
    stream = manifest["streams"]["big"]
    assert stream["columns"] == {"id": "number", "amount": "number"}
    assert stream["records"] == 10_049
    assert stream["quarantined"] == 1
    (bad,) = read_raw(config, stream["quarantine_files"])
    assert bad["reason"] == "column 'amount': expected number, got str (\"abc\")"
    assert json.loads(bad["raw_line"])["record"]["data"]["id"] == 10_030
    landed = {int(r["id"]): r for r in read_raw(config, stream["files"])}
    assert landed[10_031]["amount"] == 10_031.5
    assert json.loads(landed[10_031]["_airbyte_meta"])["changes"] == [
        {"field": "amount", "change": "CAST", "reason": "string to number"}
    ]
    assert json.loads(landed[5]["_airbyte_meta"]) == {"changes": []}


def test_missing_file_and_malformed_csv_fail_in_one_line(
    make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n1,a\n2,b,extra,more\n3,c\n")
    config = make_pipeline(
        {
            "missing": file_source(tmp_path / "nope.csv", "csv", "nope"),
            "malformed": file_source(bad, "csv", "bad"),
        }
    )
    with pytest.raises(ConnectorError) as caught:
        ingest_source(config, "missing", "r1", DAY)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("source 'missing' (airbyte-source-file==0.5.39) discover failed")
    assert "No such file or directory" in message and "(hint:" in message
    assert not caught.value.final  # source-file says system_error: the file may yet come

    with pytest.raises(ConnectorError, match="can not be parsed") as caught:
        ingest_source(config, "malformed", "r1", DAY)
    assert "\n" not in str(caught.value)
    assert caught.value.final  # config_error (reader_options): its task is not retried

    ok, status = check_source(config, "missing")
    assert not ok and "nope.csv" in status
    lake = Lake(config.lake)
    assert lake.list_files("raw") == [] and not lake.exists("_state")


def test_https_url_with_a_private_ca(
    make_pipeline: MakePipeline,
    https_files: HttpsFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """source-file reads a CSV over HTTPS from a real TLS server on 127.0.0.1; the certificate
    is trusted only through REQUESTS_CA_BUNDLE, which the connector inherits."""
    (https_files.folder / "orders.csv").write_text(
        "id,customer,amount\n" + "".join(f"{i},c{i % 4},{i}.25\n" for i in range(1, 41))
    )
    source = file_source(tmp_path / "unused", "csv", "orders")
    source["config"]["url"] = f"{https_files.url}/orders.csv"
    source["config"]["provider"] = {"storage": "HTTPS", "user_agent": False}
    config = make_pipeline({"web": source})

    with pytest.raises(ConnectorError) as untrusted:
        ingest_source(config, "web", "r0", DAY)
    assert "\n" not in str(untrusted.value)
    assert "certificate" in str(untrusted.value).lower()

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(https_files.ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(https_files.ca_file))
    manifest = ingest_source(config, "web", "r1", DAY)
    stream = manifest["streams"]["orders"]
    landed = sorted(
        (int(r["id"]), r["customer"], r["amount"]) for r in read_raw(config, stream["files"])
    )
    assert landed == [(i, f"c{i % 4}", i + 0.25) for i in range(1, 41)]
    assert stream["records"] == 40 and stream["quarantined"] == 0
    assert any(line.startswith("GET /orders.csv") for line in https_files.requests())


def test_s3_url_with_credentials_from_the_environment(
    make_pipeline: MakePipeline,
    s3_server: S3Server,
    s3_over_tls: TlsFront,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """source-file reads JSONL from s3:// on a real S3-compatible server (SeaweedFS, which checks
    credentials) on 127.0.0.1. The keys reach the connector as ${VAR} references, never inline.

    source-file 0.5.39 (smart_open 6, botocore 1.24) reaches a non-AWS server only through
    smart_open's `s3://HOST:PORT@bucket/key` form and only over HTTPS, so the server is put
    behind a TLS front whose CA the connector trusts through AWS_CA_BUNDLE."""
    bucket = s3_server.create_bucket("source-file")
    rows = [{"id": i, "kind": "view" if i % 2 else "buy", "value": i * 1.5} for i in range(1, 26)]
    body = "".join(json.dumps(r) + "\n" for r in rows)
    s3_server.client().put_object(Bucket=bucket, Key="events/2026/events.jsonl", Body=body)
    monkeypatch.setenv("R2G_SRC_KEY", s3_server.access_key)
    monkeypatch.setenv("R2G_SRC_SECRET", s3_server.secret_key)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(s3_over_tls.ca_file))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    source = {
        "connector": FILE,
        "config": {
            "dataset_name": "events",
            "format": "jsonl",
            "url": f"s3://{s3_over_tls.host_port}@{bucket}/events/2026/events.jsonl",
            "provider": {
                "storage": "S3",
                "aws_access_key_id": "${R2G_SRC_KEY}",
                "aws_secret_access_key": "${R2G_SRC_SECRET}",
            },
        },
        "streams": [{"name": "events"}],
    }
    config = make_pipeline({"bucket_events": source})
    manifest = ingest_source(config, "bucket_events", "r1", DAY)
    stream = manifest["streams"]["events"]
    landed = {int(r["id"]): (r["kind"], r["value"]) for r in read_raw(config, stream["files"])}
    assert landed == {r["id"]: (r["kind"], r["value"]) for r in rows}
    assert s3_server.secret_key not in json.dumps(manifest)

    monkeypatch.setenv("R2G_SRC_SECRET", "wrong-secret")
    with pytest.raises(ConnectorError) as denied:
        ingest_source(config, "bucket_events", "r2", DAY)
    assert "\n" not in str(denied.value)
    assert "wrong-secret" not in str(denied.value)
