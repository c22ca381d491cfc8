"""URIs, layout, manifests and state of the lake: local folder and S3 alike."""

from raw2gold.lake.layout import Lake, S3Credentials, lake_for, make_run_id, utc_now

__all__ = ["Lake", "S3Credentials", "lake_for", "make_run_id", "utc_now"]
