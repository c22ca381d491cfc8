"""The lake tests' S3 lake: a new bucket on the SeaweedFS test server (tests/fixtures)."""

import pytest

from raw2gold.config.models import LakeConfig, S3Settings
from raw2gold.lake import Lake


@pytest.fixture
def s3_lake(s3_server, monkeypatch) -> Lake:
    bucket = s3_server.create_bucket("lake-layout")
    monkeypatch.setenv("TEST_S3_KEY", s3_server.access_key)
    monkeypatch.setenv("TEST_S3_SECRET", s3_server.secret_key)
    settings = S3Settings(
        endpoint=s3_server.endpoint,
        path_style=True,
        access_key="${TEST_S3_KEY}",
        secret_key="${TEST_S3_SECRET}",
    )
    return Lake(LakeConfig(uri=f"s3://{bucket}/pipelines/shop", s3=settings))
