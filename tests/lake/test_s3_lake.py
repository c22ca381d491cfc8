"""The same lake code against a real S3-compatible server (SeaweedFS on 127.0.0.1)."""

from typing import Any

import pytest

from raw2gold.config.models import LakeConfig, S3Settings
from raw2gold.lake import Lake


def test_manifests_and_listing_on_s3(s3_lake: Lake, s3_server) -> None:
    assert s3_lake.committed_raw_runs("faker") == []
    s3_lake.write_json(Lake.raw_manifest("faker", "r1"), {"run_id": "r1", "state": [{"x": 1}]})
    assert s3_lake.exists(Lake.raw_manifest("faker", "r1"))
    assert [m["run_id"] for m in s3_lake.committed_raw_runs("faker")] == ["r1"]
    assert s3_lake.source_state("faker") == [{"x": 1}]
    bucket = s3_lake.root.split("/")[0]
    listing = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    keys = [o["Key"] for o in listing if not o["Key"].endswith("/")]
    assert keys == ["pipelines/shop/raw/faker/_runs/r1.json"]


def test_credentials_are_not_in_repr(s3_lake: Lake, s3_server) -> None:
    assert s3_server.secret_key not in repr(s3_lake.credentials)


def test_staging_folders_on_s3(s3_lake: Lake) -> None:
    """A folder written from the driver (an incremental build's affected groups) replaces what
    was there and reads back whole; staged runs list and delete as folders."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = "_staging/run1/affected/clv"
    s3_lake.replace_parquet(folder, pa.table({"__r2g_by_0": [1, 2, 3]}))
    s3_lake.replace_parquet(folder, pa.table({"__r2g_by_0": [7, 8]}))
    assert s3_lake.list_files(folder) == [f"{folder}/part-00000.parquet"]
    read = pq.read_table(s3_lake.path(folder), filesystem=s3_lake.fs)
    assert read.column("__r2g_by_0").to_pylist() == [7, 8]
    assert s3_lake.staged_runs() == ["run1"]  # prefixes list as folders
    s3_lake.delete_dir(s3_lake.staging_run("run1"))
    assert s3_lake.list_files("_staging") == []


def test_swap_json_on_s3_refuses_a_file_replaced_since_it_was_read(s3_lake: Lake) -> None:
    """S3 has no lock: the write is conditional on the ETag read (If-Match), or on no file
    (If-None-Match) for a new one; another writer's write in between wins and the late one
    raises, writing nothing."""
    from raw2gold.lake.layout import ConcurrentWriteError

    def then_another_writer(payload: dict[str, str]) -> Any:
        def replace(current: dict[str, str] | None) -> dict[str, str]:
            s3_lake.write_json("p.json", {"by": "other"})
            return payload

        return replace

    with pytest.raises(ConcurrentWriteError):  # both found no file
        s3_lake.swap_json("p.json", then_another_writer({"by": "first"}))
    assert s3_lake.read_json("p.json") == {"by": "other"}
    assert s3_lake.swap_json("p.json", lambda current: {**current, "by": "second"}) == {
        "by": "second"
    }
    with pytest.raises(ConcurrentWriteError):  # the file changed after it was read
        s3_lake.swap_json("p.json", then_another_writer({"by": "third"}))
    assert s3_lake.read_json("p.json") == {"by": "other"}


def test_swap_json_on_a_store_without_conditional_writes(monkeypatch, caplog) -> None:
    """A store that answers conditional writes with 501 Not Implemented (stores before 2024)
    gets the plain write raw2gold made before, with a warning once. The store cannot run here:
    a small HTTP server on 127.0.0.1 plays its S3 API (GET, PUT), and the test says so."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    objects: dict[str, bytes] = {}
    conditional: list[str] = []

    class Store(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", '"e"')
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path in objects:
                self._answer(200, objects[self.path])
            else:
                self._answer(404, b"<Error><Code>NoSuchKey</Code></Error>")

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("If-None-Match") or self.headers.get("If-Match"):
                conditional.append(self.path)
                self._answer(501, b"<Error><Code>NotImplemented</Code></Error>")
                return
            objects[self.path] = body
            self._answer(200)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Store)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from raw2gold.lake import layout

        monkeypatch.setattr(layout, "_UNCONDITIONAL_WARNED", [])
        monkeypatch.setenv("OLD_STORE_KEY", "key")
        monkeypatch.setenv("OLD_STORE_SECRET", "secret")
        settings = S3Settings(
            endpoint=f"http://127.0.0.1:{server.server_port}",
            path_style=True,
            access_key="${OLD_STORE_KEY}",
            secret_key="${OLD_STORE_SECRET}",
        )
        lake = Lake(LakeConfig(uri="s3://old/lake", s3=settings))
        for n in (1, 2):
            assert lake.swap_json("p.json", lambda current, n=n: {"n": n}) == {"n": n}
        assert objects == {"/old/lake/p.json": b'{\n  "n": 2\n}'}
        assert conditional == ["/old/lake/p.json"] * 2
        warnings = [r for r in caplog.records if "does not support conditional" in r.getMessage()]
        assert len(warnings) == 1  # once a process, naming the store
        assert f"store at http://127.0.0.1:{server.server_port} " in warnings[0].getMessage()
    finally:
        server.shutdown()
