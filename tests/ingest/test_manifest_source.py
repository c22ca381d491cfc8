"""A low-code manifest source (examples/api_manifest) run embedded with airbyte-cdk 7.39.1's
``source-declarative-manifest`` against a paginated JSON API served on 127.0.0.1.

airbyte-cdk refuses plain http and private hosts only under ``DEPLOYMENT_MODE=cloud`` (Airbyte
Cloud's request filter), so the tests unset it and use plain http on loopback.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from raw2gold.config import load_pipeline
from raw2gold.ingest import ingest_source
from raw2gold.lake.layout import Lake
from tests.ingest.conftest import read_raw

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "api_manifest"
API_KEY = "k-123-secret"


@dataclass
class ItemsApi:
    """A paginated items API: ``GET /items?page&per_page&updated_since`` (strictly newer)."""

    port: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def items_api() -> Iterator[ItemsApi]:
    api = ItemsApi()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            api.calls.append(query)
            body: dict[str, Any]
            if self.headers.get("X-API-Key") != API_KEY:
                code, body = 401, {"error": "bad key"}
            elif url.path != "/items":
                code, body = 404, {"error": "not found"}
            else:
                since = query.get("updated_since", "")
                rows = sorted(
                    (i for i in api.items if i["updated_at"] > since), key=lambda i: i["id"]
                )
                page, size = int(query.get("page", 1)), int(query.get("per_page", 5))
                code, body = 200, {"data": rows[(page - 1) * size : page * size]}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def item(i: int, day: int) -> dict[str, Any]:
    return {
        "id": i,
        "name": f"item {i}",
        "price": i * 1.5,
        "tags": ["a", str(i)],
        "updated_at": f"2026-01-{day:02d}T00:00:{i % 60:02d}Z",
    }


def test_manifest_source_lands_pages_and_then_only_new_records(
    items_api, tmp_path, monkeypatch
) -> None:
    """The example pipeline, copied to tmp (its lake lands there): 12 items over 3 pages, then a
    second run with the saved cursor lands only the 3 new items."""
    for name in ("manifest.yaml", "pipeline.yaml"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    monkeypatch.setenv("API_BASE_URL", items_api.url)
    monkeypatch.setenv("API_KEY", API_KEY)
    monkeypatch.delenv("DEPLOYMENT_MODE", raising=False)
    config = load_pipeline(tmp_path / "pipeline.yaml")
    items_api.items = [item(i, 1 + i // 5) for i in range(1, 13)]
    logs: list[str] = []

    first = ingest_source(config, "api", "r1", "2026-03-01", log=logs.append)
    stream = first["streams"]["items"]
    assert stream["records"] == 12 and stream["quarantined"] == 0
    rows = sorted(read_raw(config, stream["files"]), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(1, 13))
    assert rows[0]["name"] == "item 1" and rows[0]["price"] == 1.5
    assert json.loads(rows[0]["tags"]) == ["a", "1"]
    assert {r["_raw2gold_run_id"] for r in rows} == {"r1"}
    # The first request carries no page parameter; 5 + 5 + 2 items: the short page ends it.
    assert [c.get("page", "1") for c in items_api.calls] == ["1", "2", "3"], items_api.calls
    assert first["state"], "an incremental stream commits its cursor state"
    assert API_KEY not in json.dumps(first) and all(API_KEY not in line for line in logs)

    items_api.calls.clear()
    items_api.items += [item(i, 20) for i in range(13, 16)]
    second = ingest_source(config, "api", "r2", "2026-03-02")
    assert second["state_in"] is True
    assert items_api.calls and all(
        c.get("updated_since", "") >= "2026-01-03" for c in items_api.calls
    ), items_api.calls
    new = read_raw(config, second["streams"]["items"]["files"])
    assert sorted(r["id"] for r in new) == [13, 14, 15]
    assert [m["run_id"] for m in Lake(config.lake).committed_raw_runs("api")] == ["r1", "r2"]
