"""Incremental runs with the lake on S3: a real S3-compatible server (SeaweedFS) on 127.0.0.1.

A second run with new, updated and CDC-deleted purchases goes through what only an
incremental run uses — MERGE and the deleted keys, the Delta log read without Spark, the change
feed, affected groups written from the driver and read back through S3A, an incremental Parquet
publish behind its pointer — and gold must equal the independent computation after each run.
While run2 starts, another run holds processed purchases' lease (Delta on S3 is single-driver):
run2 waits for it, then applies its raw run as before. Its one purchase with an unreadable date
is quarantined, and `raw2gold quarantine` reads it from S3.
Spark runs in its own process: the session-wide `spark` fixture has no S3 jars.
"""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.paths import shop_copy_on_s3

SCRIPT = """
import json, logging, sys, threading, time
from datetime import UTC, datetime

import pyarrow as pa

from raw2gold.config.loader import load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.lake.lease import TableLease, lease_path
from raw2gold.transform.job import STAGES, run_stage
from raw2gold.transform.session import spark_session
from tests.transform.rawdata import ts, write_raw_run
from tests.transform.reference import assert_gold_matches_reference, first_shop_run

CDC = {"_ab_cdc_deleted_at": pa.string()}
T1, T2 = datetime(2026, 3, 1, 6, tzinfo=UTC), datetime(2026, 3, 2, 6, tzinfo=UTC)
config = load_pipeline(sys.argv[1])
lake = Lake(config.lake)
spark = spark_session(config, "raw2gold-s3-incremental")
records = first_shop_run(config, spark, T1, extra_fields=CDC)

bought = [p for p in records["purchases"] if p["purchased_at"] and not p["returned_at"]]
deleted = [
    {**p, "updated_at": ts(8, p["id"]), "_ab_cdc_deleted_at": ts(8, p["id"])} for p in bought[:3]
]
returned = [{**p, "updated_at": ts(8, p["id"]), "returned_at": ts(8, p["id"])} for p in bought[3:5]]
new = [
    {**bought[0], "id": 1000 + i, "user_id": 1 + i, "updated_at": ts(9, i),
     "purchased_at": ts(9, i), "returned_at": None}
    for i in range(6)
]
unreadable = {**new[0], "id": 2000, "purchased_at": "not-a-date"}  # quarantined
purchases = deleted + returned + new + [unreadable]
write_raw_run(lake, "faker", "r2", {"purchases": purchases}, T2, extra_fields=CDC)
# another run (runX) is writing processed purchases when run2 starts: run2 waits for its lease
waits = []
class Waits(logging.Handler):
    def emit(self, record):
        if "waiting for run runX" in record.getMessage():
            waits.append(record.getMessage())
logging.getLogger("raw2gold.lake.lease").addHandler(Waits())
logging.getLogger("raw2gold.lake.lease").setLevel(logging.INFO)
other = TableLease(lake, "processed.purchases", "runX", ttl=30)
other.acquire()
released = []
def release_later():
    time.sleep(8)
    released.append(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    other.release()
threading.Thread(target=release_later).start()
summaries = {stage: run_stage(config, stage, "run2", spark=spark) for stage in STAGES}
lease = lake.read_json(lease_path("processed.purchases"))
assert_gold_matches_reference(config)
# `raw2gold quarantine` reads the rejected row from S3 with delta-rs (no JVM)
import contextlib, io
from raw2gold.cli import main as cli
report = io.StringIO()
with contextlib.redirect_stdout(report):
    assert cli(["quarantine", "purchases", "-p", sys.argv[1], "--json"]) == 0
report = json.loads(report.getvalue())
processed = summaries["transform"]["processed"]["purchases"]
gold = summaries["transform"]["gold"]
print("RESULT " + json.dumps({
    "rows_deleted": processed["rows_deleted"],
    "builds": {name: gold[name]["build"] for name in sorted(gold)},
    "waited_for_runX": bool(waits),
    "lease": [lease["run_id"], lease["released"], lease["acquired_at"] >= released[0]],
    "quarantine": [report["problems"], [json.loads(r["record"])["id"] for r in report["sample"]]],
}))
spark.stop()
"""


def test_incremental_run_on_s3_matches_the_reference(s3_server, tmp_path: Path) -> None:
    bucket = s3_server.create_bucket("incremental")
    pipeline = shop_copy_on_s3(s3_server, tmp_path, bucket, "shop")
    result = s3_server.run_script(SCRIPT, str(pipeline), timeout=900)
    assert result == {
        "rows_deleted": 3,
        "builds": {
            "customer_lifetime_value": "incremental",
            "daily_category_revenue": "incremental",
            "top_products": "full",
        },
        "waited_for_runX": True,
        "lease": ["run2", True, True],  # run2 took the lease after runX released it
        "quarantine": [
            [
                {
                    "problem": "column purchased_at: cannot cast to timestamp",
                    "rows": 1,
                    "raw_runs": ["r2"],
                }
            ],
            [2000],
        ],
    }
    assert not (pipeline.parent / "lake").exists(), "nothing may land on the local disk"
