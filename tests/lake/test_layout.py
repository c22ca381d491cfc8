"""Lake layout and small-file I/O on a local folder."""

from pathlib import Path

from raw2gold.config.models import LakeConfig
from raw2gold.lake import Lake, make_run_id
from raw2gold.lake.layout import RUN_ID_PATTERN


def test_run_ids_are_path_safe_and_stable() -> None:
    airflow_run_id = "manual__2026-11-26T16:28:33.656919+00:00"
    first, second = make_run_id(airflow_run_id), make_run_id(airflow_run_id)
    assert RUN_ID_PATTERN.match(first)
    assert first[-8:] == second[-8:]
    assert ":" not in first and "+" not in first
    assert make_run_id("other")[-8:] != first[-8:]


def test_layout_paths(tmp_path: Path) -> None:
    lake = Lake(LakeConfig(uri=str(tmp_path)))
    run = "20261126T101500Z-0123abcd"
    assert Lake.raw_run_dir("faker", "users", "2026-11-26", run) == (
        f"raw/faker/users/ingest_date=2026-11-26/run_id={run}"
    )
    assert Lake.raw_manifest("faker", run) == f"raw/faker/_runs/{run}.json"
    assert lake.spark_uri("processed/users") == f"file:{tmp_path}/processed/users"
    assert lake.uri("gold/x") == f"{tmp_path}/gold/x"


def test_s3_uris_without_touching_the_network() -> None:
    lake = Lake(LakeConfig(uri="s3://bucket/some/prefix"))
    assert lake.path("gold", "t") == "bucket/some/prefix/gold/t"
    assert lake.uri("gold/t") == "s3://bucket/some/prefix/gold/t"
    assert lake.spark_uri("gold/t") == "s3a://bucket/some/prefix/gold/t"


def test_manifests_make_runs_visible(tmp_path: Path) -> None:
    lake = Lake(LakeConfig(uri=str(tmp_path)))
    assert lake.committed_raw_runs("faker") == []
    assert lake.source_state("faker") is None
    # A partial run (parts but no manifest) is invisible.
    part = tmp_path / Lake.raw_run_dir("faker", "users", "2026-11-26", "r0") / "part-00000.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"partial")
    assert lake.committed_raw_runs("faker") == []
    lake.write_json(
        Lake.raw_manifest("faker", "r1"),
        {"run_id": "r1", "finished_at": "2026-11-26T10:00:00", "state": [{"a": 1}]},
    )
    lake.write_json(
        Lake.raw_manifest("faker", "r2"), {"run_id": "r2", "finished_at": "2026-11-26T11:00:00"}
    )
    assert [m["run_id"] for m in lake.committed_raw_runs("faker")] == ["r1", "r2"]
    assert lake.source_state("faker") == [{"a": 1}]
    assert not list((tmp_path / "raw/faker/_runs").glob("*.tmp-*"))
    assert lake.list_files("raw/faker", ".parquet") == [
        str(part.relative_to(tmp_path)).replace("\\", "/")
    ]


def test_swap_json_lets_one_writer_at_a_time_read_and_replace(tmp_path: Path) -> None:
    """Two read-then-replace writers at once: the second waits for the first and reads what it
    wrote, so neither increment is lost; a writer that refuses leaves the file as it was."""
    import threading

    import pytest

    lake = Lake(LakeConfig(uri=str(tmp_path)))
    seen: list[int] = []
    other: list[threading.Thread] = []

    def add_one(current: dict[str, int] | None) -> dict[str, int]:
        count = (current or {"count": 0})["count"]
        seen.append(count)
        if not other:  # the first writer lets a second one start while it holds the file
            other.append(threading.Thread(target=lake.swap_json, args=("c.json", add_one)))
            other[0].start()
            other[0].join(timeout=1)
            assert other[0].is_alive()  # waiting for the first writer, not reading yet
        return {"count": count + 1}

    assert lake.swap_json("c.json", add_one) == {"count": 1}
    other[0].join(timeout=10)
    assert seen == [0, 1] and lake.read_json("c.json") == {"count": 2}

    def refuse(current: dict[str, int] | None) -> dict[str, int]:
        raise ValueError("no")

    with pytest.raises(ValueError):
        lake.swap_json("c.json", refuse)
    assert lake.read_json("c.json") == {"count": 2}


def test_two_writers_deleting_one_folder_at_once_both_succeed(tmp_path: Path) -> None:
    """A failed Parquet publish deletes its version folder while the publish that won prunes
    the same folder (not named by its pointer). Before, the first deletion to miss a file the
    other had removed raised FileNotFoundError, and the run failed with that instead of "another
    run published …" (seen in a test under load); it happened in 50 of 50 rounds here."""
    import threading

    lake = Lake(LakeConfig(uri=str(tmp_path)))
    errors: list[BaseException] = []

    def delete() -> None:
        try:
            lake.delete_dir("gold/t/version=a")
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    for _ in range(20):
        for part in range(5):
            folder = tmp_path / "gold" / "t" / "version=a" / f"day={part}"
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(40):
                (folder / f"part-{number:05d}.parquet").write_bytes(b"x")
        threads = [threading.Thread(target=delete) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert not (tmp_path / "gold" / "t" / "version=a").exists()
