"""Atomic publishing of checked gold, and readers of published gold."""

from raw2gold.publish.publisher import (
    PublishError,
    PublishResult,
    current_pointer,
    gold_arrow_table,
    lineage,
    publish,
    publish_history,
    read_gold,
)

__all__ = [
    "PublishError",
    "PublishResult",
    "current_pointer",
    "gold_arrow_table",
    "lineage",
    "publish",
    "publish_history",
    "read_gold",
]
