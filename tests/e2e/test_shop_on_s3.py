"""The shop pipeline with its lake on S3: a real S3-compatible server (SeaweedFS) on 127.0.0.1,
credentials from the environment, path-style access — the config shape a deployment uses.

Everything runs for real (connectors, pyarrow's S3 file system, Spark over S3A, delta-rs); the
lake is then copied out of the bucket and checked against the same independent DuckDB
computation as the local run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.e2e.reference import RAW2GOLD, assert_shop_gold_matches_reference


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


def test_shop_pipeline_on_s3(s3_server, shop_pipeline: Path, tmp_path: Path) -> None:
    bucket = s3_server.create_bucket("shop-lake")
    pipeline_dir = tmp_path / "shop"
    shutil.copytree(shop_pipeline.parent, pipeline_dir, ignore=shutil.ignore_patterns("lake"))
    config = yaml.safe_load((pipeline_dir / "pipeline.yaml").read_text())
    config["lake"] = {
        "uri": f"s3://{bucket}/pipelines/shop",
        "s3": {
            "endpoint": s3_server.endpoint,
            "region": "us-east-1",
            "path_style": True,
            "access_key": "${AWS_ACCESS_KEY_ID}",
            "secret_key": "${AWS_SECRET_ACCESS_KEY}",
        },
    }
    (pipeline_dir / "pipeline.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        **os.environ,
        "RAW2GOLD_HOME": str(tmp_path / ".raw2gold"),
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    result = subprocess.run(
        [*RAW2GOLD, "run", str(pipeline_dir / "pipeline.yaml")],
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
