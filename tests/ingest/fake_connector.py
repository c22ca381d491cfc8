"""A tiny Airbyte source for tests: `python fake_connector.py <verb> --config c.json ...`.

Its behaviour comes from the config: ``mode`` (ok, garbage, fail, hang), ``records``,
``api_key`` (logged, to prove it is masked) and ``calls_file`` (each invocation appends a line).
Stream ``items`` is incremental on ``seq``: with state ``{"seq": N}`` it starts after N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "seq": {"type": "integer"},
        "name": {"type": ["null", "string"]},
        "price": {"type": "number"},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "ts": {"type": "string", "format": "date-time"},
        "either": {"type": ["integer", "string"]},
    },
}


def emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def log(message: str, level: str = "INFO") -> None:
    emit({"type": "LOG", "log": {"level": level, "message": message}})


def record(data: dict, meta: dict | None = None) -> None:
    body = {"stream": "items", "data": data, "emitted_at": 1_795_000_000_123}
    if meta:
        body["meta"] = meta
    emit({"type": "RECORD", "record": body})


def state(seq: int) -> None:
    emit(
        {
            "type": "STATE",
            "state": {
                "type": "STREAM",
                "stream": {"stream_descriptor": {"name": "items"}, "stream_state": {"seq": seq}},
            },
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("verb")
    parser.add_argument("--config")
    parser.add_argument("--catalog")
    parser.add_argument("--state")
    args = parser.parse_args()
    config = json.load(open(args.config)) if args.config else {}
    if config.get("calls_file"):
        with open(config["calls_file"], "a") as calls:
            calls.write(args.verb + "\n")
    if args.verb == "spec":
        emit({"type": "SPEC", "spec": {"connectionSpecification": {"type": "object"}}})
        return 0
    if args.config:
        mode = oct(os.stat(args.config).st_mode & 0o777)
        log(f"config file {args.config} mode {mode} api_key={config.get('api_key')}")
    if args.verb == "check":
        ok = config.get("mode") != "fail"
        status = {"status": "SUCCEEDED"} if ok else {"status": "FAILED", "message": "bad key"}
        emit({"type": "CONNECTION_STATUS", "connectionStatus": status})
        return 0
    if args.verb == "discover":
        stream = {
            "name": "items",
            "json_schema": SCHEMA,
            "supported_sync_modes": ["full_refresh", "incremental"],
            "source_defined_cursor": True,
            "default_cursor_field": ["seq"],
            "source_defined_primary_key": [["id"]],
        }
        emit({"type": "CATALOG", "catalog": {"streams": [stream]}})
        return 0
    start = 0
    if args.state:
        for message in json.load(open(args.state)):
            start = message["stream"]["stream_state"]["seq"]
        log(f"resuming after seq {start}")
    mode = config.get("mode", "ok")
    count = int(config.get("records", 5))
    for seq in range(start + 1, start + count + 1):
        record(
            {
                "id": seq,
                "seq": seq,
                "name": f"item {seq}",
                "price": seq + 0.5,
                "active": seq % 2 == 0,
                "tags": ["a", str(seq)],
                "ts": "2026-01-01T00:00:00Z",
                "either": seq if seq % 2 else f"s{seq}",
            }
        )
    last = start + count
    if mode == "garbage":
        print("this is not json")
        sys.stdout.write('["a json line that is not a message"]\n')
        record({"id": last + 1, "seq": last + 1})  # optional keys missing -> nulls
        record({"id": "abc", "seq": last + 2, "name": "bad id"})  # type violation
        record({"id": last + 3, "seq": last + 3, "surprise": {"x": 1}, "price": "7.25"})
        record({"id": last + 4, "seq": last + 4}, meta={"changes": [{"field": "n"}]})
        log("careful", "WARN")
        sys.stderr.write("a warning on stderr\n")
        last += 4
    state(last)
    if mode == "fail":
        sys.stderr.write("Traceback: something broke\n")
        error = {"message": "Upstream API said no: quota exceeded", "failure_type": "system_error"}
        emit({"type": "TRACE", "trace": {"type": "ERROR", "emitted_at": 1, "error": error}})
        return 1
    if mode == "crash":
        sys.stderr.write("Traceback (most recent call last):\nRuntimeError: segfault-ish\n")
        return 3
    if mode == "hang":
        child = subprocess.Popen(["sleep", "300"])
        log(f"child pid {child.pid}")
        time.sleep(300)
    return 0


if __name__ == "__main__":
    sys.exit(main())
