"""Spark's S3A path with the pinned hadoop-aws + AWS SDK, against a real S3 server (SeaweedFS).

Spark runs in its own process: the session-wide `spark` fixture has no S3 jars, and a JVM's jars
cannot change once it has started.
"""

from __future__ import annotations

import json
from pathlib import Path

from deltalake import DeltaTable

SCRIPT = """
import json, sys
from raw2gold.config.models import LakeConfig, PipelineConfig, S3Settings
from raw2gold.lake import Lake
from raw2gold.transform.session import spark_session

settings = S3Settings(**json.loads(sys.argv[2]))
config = PipelineConfig.model_validate({
    "name": "s3probe",
    "lake": {"uri": sys.argv[1], "s3": settings.model_dump()},
    "sources": {"none": {"airbyte": {"connection_id": "none"}, "streams": [{"name": "none"}]}},
})
lake = Lake(config.lake)
spark = spark_session(config, "raw2gold-s3a-roundtrip")
target = lake.spark_uri("gold", "numbers")
df = spark.range(1, 101).selectExpr("id", "id * 2 AS doubled", "CAST(id % 3 AS INT) AS bucket")
df.write.format("delta").partitionBy("bucket").mode("overwrite").save(target)
back = spark.read.format("delta").load(target)
parquet_target = lake.spark_uri("gold", "numbers_parquet")
df.write.mode("overwrite").parquet(parquet_target)
print("RESULT " + json.dumps({
    "delta_rows": back.count(),
    "delta_sum": back.agg({"doubled": "sum"}).collect()[0][0],
    "parquet_rows": spark.read.parquet(parquet_target).count(),
    "target": target,
}))
spark.stop()
"""


def test_delta_and_parquet_round_trip_over_s3a(s3_server, tmp_path: Path) -> None:
    bucket = s3_server.create_bucket("s3a")
    settings = {
        "endpoint": s3_server.endpoint,
        "path_style": True,
        "access_key": "${AWS_ACCESS_KEY_ID}",
        "secret_key": "${AWS_SECRET_ACCESS_KEY}",
    }
    got = s3_server.run_script(SCRIPT, f"s3://{bucket}/lake", json.dumps(settings))
    assert got == {
        "delta_rows": 100,
        "delta_sum": 2 * sum(range(1, 101)),
        "parquet_rows": 100,
        "target": f"s3a://{bucket}/lake/gold/numbers",
    }
    # An independent reader (delta-rs) sees the same table in the bucket.
    table = DeltaTable(
        f"s3://{bucket}/lake/gold/numbers",
        storage_options={
            "AWS_ENDPOINT_URL": s3_server.endpoint,
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        },
    )
    data = table.to_pyarrow_table()
    assert data.num_rows == 100
    assert sorted(data.column("id").to_pylist()) == list(range(1, 101))
    assert table.metadata().partition_columns == ["bucket"]
