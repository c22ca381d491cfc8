"""The shop pipeline with its lake on S3: a real S3-compatible server (SeaweedFS) on 127.0.0.1,
credentials from the environment, path-style access — the config shape a deployment uses.

Everything runs for real (connectors, pyarrow's S3 file system, Spark over S3A, delta-rs); the
lake is then copied out of the bucket and checked against the same independent DuckDB
computation as the local run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.e2e.reference import RAW2GOLD, assert_shop_gold_matches_reference
from tests.fixtures.paths import shop_copy_on_s3


def mirror(s3_server, bucket: str, prefix: str, target: Path) -> None:
    """Copy every object under s3://bucket/prefix/ into a local folder."""
    client = s3_server.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/"):
                continue
            path = target / key.removeprefix(prefix).lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(path))


def test_shop_pipeline_on_s3(s3_server, tmp_path: Path) -> None:
    bucket = s3_server.create_bucket("shop-lake")
    pipeline = shop_copy_on_s3(s3_server, tmp_path, bucket, "pipelines/shop")
    pipeline_dir = pipeline.parent
    env = {
        **os.environ,
        "RAW2GOLD_HOME": str(tmp_path / ".raw2gold"),
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    result = subprocess.run(
        [*RAW2GOLD, "run", str(pipeline)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "gold.top_products: 10 rows" in result.stdout
    logs = "".join(p.read_text() for p in (tmp_path / ".raw2gold" / "logs").glob("*.log"))
    assert s3_server.secret_key not in result.stdout + result.stderr + logs
    assert not (pipeline_dir / "lake").exists(), "nothing may land on the local disk"

    lake = tmp_path / "mirror"
    mirror(s3_server, bucket, "pipelines/shop", lake)
    assert_shop_gold_matches_reference(lake)
