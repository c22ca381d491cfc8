"""An independent computation of the shop example's gold tables, with DuckDB over raw Parquet.

It shares no code with the Spark stages: it reads the raw manifests and files directly, and
re-implements dedup (latest `updated_at` per id), typing and the three gold models in SQL.
Published gold is read without raw2gold's code too (delta-rs, the Parquet pointer).
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
from deltalake import DeltaTable

# The raw2gold CLI as the e2e tests run it: this interpreter, in a subprocess.
RAW2GOLD = [sys.executable, "-m", "raw2gold.cli"]


def raw_files(lake: Path, source: str, stream: str) -> list[list[str]]:
    """Files of every committed run of a stream, one list per run, oldest run first."""
    runs = []
    for manifest_path in sorted((lake / "raw" / source / "_runs").glob("*.json")):
        manifest = json.loads(manifest_path.read_text())
        files = manifest["streams"].get(stream, {}).get("files", [])
        runs.append((manifest.get("finished_at", ""), [str(lake / f) for f in files]))
    return [files for _, files in sorted(runs)]


def shop_reference(lake: Path) -> dict[str, list[dict]]:
    """{gold table: rows} for the shop example, computed from raw with DuckDB."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")

    def latest(source: str, stream: str, name: str) -> None:
        files = [f for run in raw_files(lake, source, stream) for f in run]
        assert files, f"no raw files for {source}.{stream}"
        con.execute(
            f"""CREATE VIEW {name} AS
            SELECT * FROM read_parquet({files!r}, union_by_name = true)
            QUALIFY row_number() OVER (
              PARTITION BY id
              ORDER BY CAST(updated_at AS TIMESTAMPTZ) DESC, _airbyte_extracted_at DESC
            ) = 1"""
        )

    latest("faker", "users", "users")
    latest("faker", "products", "products")
    latest("faker", "purchases", "purchases")
    # A full-refresh stream: the newest run is the whole table.
    newest = raw_files(lake, "catalog_csv", "make_categories")[-1]
    con.execute(f"CREATE VIEW make_categories AS SELECT * FROM read_parquet({newest!r})")
    con.execute(
        """CREATE VIEW done AS
        SELECT p.id, p.user_id, p.product_id,
               CAST(p.purchased_at AS TIMESTAMPTZ) AS purchased_at
        FROM purchases p WHERE p.purchased_at IS NOT NULL AND p.returned_at IS NULL"""
    )

    def rows(sql: str) -> list[dict]:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    return {
        "daily_category_revenue": rows(
            """SELECT CAST(d.purchased_at AS DATE) AS purchase_date,
                      COALESCE(c.category, 'unknown') AS category,
                      COUNT(*) AS purchases,
                      SUM(CAST(pr.price AS DECIMAL(12, 2))) AS revenue
               FROM done d JOIN products pr ON pr.id = d.product_id
               LEFT JOIN make_categories c ON c.make = pr.make
               GROUP BY 1, 2 ORDER BY 1, 2"""
        ),
        "customer_lifetime_value": rows(
            """SELECT u.id AS user_id, u.email, COUNT(d.id) AS purchases,
                      COALESCE(SUM(CAST(pr.price AS DECIMAL(12, 2))), 0) AS lifetime_value
               FROM users u LEFT JOIN done d ON d.user_id = u.id
               LEFT JOIN products pr ON pr.id = d.product_id
               GROUP BY 1, 2 ORDER BY 1"""
        ),
        "top_products": rows(
            """SELECT pr.id AS product_id, pr.make, pr.model, COUNT(*) AS purchases,
                      SUM(CAST(pr.price AS DECIMAL(12, 2))) AS revenue
               FROM done d JOIN products pr ON pr.id = d.product_id
               GROUP BY 1, 2, 3 ORDER BY revenue DESC, product_id LIMIT 10"""
        ),
    }


GOLD_FORMATS = {
    "daily_category_revenue": "delta",
    "customer_lifetime_value": "parquet",
    "top_products": "delta",
}


def read_gold(lake: Path, table: str, fmt: str) -> list[dict]:
    """Read a published gold table without raw2gold's code: delta-rs, or the Parquet pointer."""
    path = lake / "gold" / table
    if fmt == "delta":
        return DeltaTable(str(path)).to_pyarrow_table().to_pylist()
    pointer = json.loads((path / "_current.json").read_text())
    return pq.read_table(str(lake / pointer["path"])).to_pylist()


def assert_shop_gold_matches_reference(lake: Path) -> None:
    """Every published gold table of the shop example equals :func:`shop_reference`."""
    expected = shop_reference(lake)

    revenue = sorted(
        read_gold(lake, "daily_category_revenue", "delta"),
        key=lambda r: (r["purchase_date"], r["category"]),
    )
    assert [(r["purchase_date"], r["category"], r["purchases"], r["revenue"]) for r in revenue] == [
        (r["purchase_date"], r["category"], r["purchases"], r["revenue"])
        for r in expected["daily_category_revenue"]
    ]
    assert sum(r["revenue"] for r in revenue) > Decimal(0)

    clv = sorted(read_gold(lake, "customer_lifetime_value", "parquet"), key=lambda r: r["user_id"])
    assert [(r["user_id"], r["email"], r["purchases"], r["lifetime_value"]) for r in clv] == [
        (r["user_id"], r["email"], r["purchases"], r["lifetime_value"])
        for r in expected["customer_lifetime_value"]
    ]
    assert len(clv) == 1000

    top = read_gold(lake, "top_products", "delta")
    top = sorted(top, key=lambda r: (-r["revenue"], r["product_id"]))
    assert [(r["product_id"], r["purchases"], r["revenue"]) for r in top] == [
        (r["product_id"], r["purchases"], r["revenue"]) for r in expected["top_products"]
    ]


MAINTENANCE = ("OPTIMIZE", "VACUUM")  # operations of raw2gold's `maintain` in the Delta log


def assert_faker_rebuilt_from_scratch(lake: Path) -> None:
    """After a full refresh: the newest faker raw run read every user again (the shop's 1000),
    and the processed tables fed by it were rewritten by an overwrite, not a MERGE (table
    maintenance may have committed after it)."""
    runs = (lake / "raw" / "faker" / "_runs").glob("*.json")
    newest = max(runs, key=lambda p: p.stat().st_mtime)
    assert json.loads(newest.read_text())["streams"]["users"]["records"] == 1000
    for table in ("users", "purchases"):
        commits = [
            a["commitInfo"]
            for log in sorted((lake / "processed" / table / "_delta_log").glob("*.json"))
            for a in map(json.loads, log.read_text().splitlines())
            if "commitInfo" in a and not a["commitInfo"]["operation"].startswith(MAINTENANCE)
        ]
        last = commits[-1]
        assert (last["operation"], last["operationParameters"].get("mode")) == (
            "WRITE",
            "Overwrite",
        ), (table, last)
