"""Spark stages: session, raw -> processed (Delta MERGE), gold staging, and the job entry."""
