"""The `raw2gold` command line: validate, run, show, init, sources, history.

Errors are one clear line with a hint and a non-zero exit code; `--verbose` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from raw2gold.config import ConfigError, PipelineConfig, load_pipeline
from raw2gold.errors import Raw2GoldError, first_line
from raw2gold.process_exit import exit_now


def _width(stream: Any) -> int | None:
    """A terminal's own width (or COLUMNS); for a pipe, a file or a log, wide enough that a
    table's rows are not cut to Rich's 80 columns (table names and run ids ending in '…')."""
    isatty = getattr(stream, "isatty", None)
    if "COLUMNS" in os.environ or (isatty is not None and isatty()):
        return None
    return 500


console = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))


def _table(title: str, columns: Iterable[str], right: Iterable[str] = ()) -> Table:
    """A table whose cells fold onto more lines in a narrow terminal instead of being cut."""
    table = Table(title=title, show_edge=False)
    aligned = set(right)
    for column in columns:
        table.add_column(column, justify="right" if column in aligned else "left", overflow="fold")
    return table


class CliError(Exception):
    """A user-facing error: one line, with a hint."""


def _load(args: argparse.Namespace) -> PipelineConfig:
    return load_pipeline(args.pipeline, lake_uri=getattr(args, "lake", None))


# ---- validate ------------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args)
    console.print(
        f"[green]ok[/green] {config.path}: pipeline {config.name!r}, "
        f"{len(config.sources)} sources, {len(config.processed)} processed and "
        f"{len(config.gold)} gold tables"
    )
    return 0


# ---- run -----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from raw2gold.lake import make_run_id
    from raw2gold.orchestrate.local_run import TaskEvent, logs_folder, run_dag_test, shown_folder

    config = _load(args)
    unknown = [s for s in args.sources or [] if s not in config.sources]
    if unknown:
        raise CliError(
            f"no source {unknown[0]!r} in {args.pipeline}; known: {', '.join(config.sources)}"
        )
    lake_uri = config.lake.uri if args.lake else None
    run_id = make_run_id()
    signal.signal(signal.SIGTERM, _interrupted)  # stopped like Ctrl-C: its work stops with it
    logs = shown_folder(logs_folder())
    console.print(
        f"raw2gold run [bold]{config.name}[/bold] · run {run_id} · lake {config.lake.uri}\n"
        f"  through Airflow (dags test of {config.dag_id}); full log in {logs}"
    )

    def show(event: TaskEvent) -> None:
        if event.state == "running":
            console.print(f"  [cyan]…[/cyan] {event.task_id} started (try {event.tries})")
        else:
            mark = "[green]✔[/green]" if event.state == "success" else "[red]✘[/red]"
            if event.state in {"skipped"}:
                mark = "[yellow]–[/yellow]"
            console.print(f"  {mark} {event.task_id} {event.state} in {event.seconds:.1f}s")

    result = run_dag_test(
        config,
        run_id,
        lake_uri=lake_uri,
        full_refresh=args.full_refresh,
        sources=args.sources,
        ingest=not args.no_ingest,
        on_event=show,
    )
    if not result.ok:
        raise CliError(f"run {run_id} failed: {result.error} (full log: {result.log_file})")
    _print_run_summary(config, run_id, result.tasks, result.seconds)
    return 0


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _print_run_summary(
    config: PipelineConfig, run_id: str, tasks: dict[str, Any], seconds: float
) -> None:
    from raw2gold.orchestrate.summary import processed_note, run_summary

    summary = run_summary(str(config.path), run_id, lake_uri=config.lake.uri)
    table = _table(f"run {run_id}: rows per layer", ("layer", "table", "rows", "note"), ["rows"])
    for source, streams in summary["raw"].items():
        for stream, stats in streams.items():
            note = f"{stats['quarantined']} quarantined" if stats.get("quarantined") else ""
            table.add_row("raw", f"{source}.{stream}", str(stats["records"]), note)
    stages = summary["stages"]
    processed = stages.get("processed") or stages.get("transform") or {}
    for name, stats in processed.get("processed", {}).items():
        table.add_row("processed", name, str(stats.get("rows", "")), processed_note(stats))
    publish = summary["stages"].get("publish", {})
    built = (stages.get("gold") or stages.get("transform") or {}).get("gold", {})
    for name, stats in publish.get("gold", {}).items():
        build = built.get(name, {})
        note = ", ".join(
            part
            for part in (
                stats.get("format", ""),
                build.get("build", ""),
                f"{build['groups']} groups rebuilt" if build.get("groups", -1) >= 0 else "",
            )
            if part
        )
        table.add_row("gold", name, str(stats.get("rows", "")), note)
    console.print(table)
    stage_times = _table("time per task", ("task", "seconds"), ["seconds"])
    for task_id, event in tasks.items():
        stage_times.add_row(task_id, f"{event.seconds:.1f}")
    stage_times.add_row("[bold]total[/bold]", f"{seconds:.1f}")
    console.print(stage_times)
    for name in config.gold:
        _print_gold(config, name, limit=5)


# ---- show ----------------------------------------------------------------------------------
def _print_gold(config: PipelineConfig, name: str, limit: int, as_of: str | None = None) -> None:
    from raw2gold.publish import gold_arrow_table

    data = gold_arrow_table(config, name, as_of)
    when = f" as run {as_of} published it" if as_of else ""
    table = _table(f"gold.{name}{when}: {data.num_rows} rows", data.column_names)
    for row in data.slice(0, limit).to_pylist():
        table.add_row(*[("" if v is None else str(v)) for v in row.values()])
    console.print(table)


def cmd_show(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.table not in config.gold:
        raise CliError(
            f"no gold table {args.table!r} in {config.path.name}; known: {', '.join(config.gold)}"
        )
    _print_gold(config, args.table, args.limit, args.as_of)
    return 0


# ---- quarantine ----------------------------------------------------------------------------
def cmd_quarantine(args: argparse.Namespace) -> int:
    from raw2gold.quality.quarantine import read_quarantine

    config = _load(args)
    if args.table not in config.processed:
        known = ", ".join(config.processed)
        raise CliError(f"no processed table {args.table!r} in {config.path.name}; known: {known}")
    report = read_quarantine(config, args.table, args.run, args.limit)
    if args.json:
        console.print_json(json.dumps(report.as_dict(), default=str))
        return 0
    of_run = f" of run {args.run}" if args.run else ""
    if not report.rows:
        console.print(f"processed.{args.table} quarantined no rows{of_run} in {config.lake.uri}")
        return 0
    problems = _table(
        f"quarantine of processed.{args.table}{of_run}: {report.rows} rows",
        ("problem", "rows", "raw runs"),
        right=("rows",),
    )
    for problem in report.problems:
        problems.add_row(problem.problem, str(problem.rows), ", ".join(sorted(problem.raw_runs)))
    console.print(problems)
    sample = _table(
        f"first {len(report.sample)} rows", ("raw run", "record id", "reason", "record")
    )
    for row in report.sample:
        sample.add_row(row["raw_run_id"], row["_airbyte_raw_id"], row["reason"], row["record"])
    console.print(sample)
    return 0


# ---- maintain ------------------------------------------------------------------------------
def cmd_maintain(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from raw2gold.transform.job import StageError, run_stage

    config = _load(args)
    run_id = f"maintain-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    try:
        summary = run_stage(config, "maintain", run_id)
    except StageError as exc:
        raise CliError(f"maintenance failed: {exc}") from exc
    columns = ("table", "live files", "small", "optimized", "vacuumed", "files after", "note")
    table = _table(f"maintenance {run_id}", columns, columns[1:-1])
    for name, result in summary["maintained"].items():
        forgotten = result.get("keys_forgotten", 0)
        table.add_row(
            name,
            str(result["live_files"]),
            str(result["small_files"]),
            "yes" if result["optimized"] else "",
            "yes" if result["vacuumed"] else "",
            str(result["live_files_after"]),
            f"{forgotten} deleted keys forgotten" if forgotten else "",
        )
    console.print(table)
    return 0


# ---- history -------------------------------------------------------------------------------
def cmd_history(args: argparse.Namespace) -> int:
    from raw2gold.publish import publish_history

    config = _load(args)
    if args.table not in config.gold:
        raise CliError(f"no gold table {args.table!r}; known: {', '.join(config.gold)}")
    entries = publish_history(config, args.table)
    if not entries and not args.json:
        console.print(f"gold.{args.table} has not been published in {config.lake.uri} yet")
        return 0
    if args.json:
        console.print_json(json.dumps(entries, default=str))
        return 0
    columns = ("version", "run_id", "published_at", "rows", "checks", "build", "inputs")
    table = _table(f"history of gold.{args.table}", columns)
    for entry in entries:
        checks = entry.get("checks") or []
        passed = sum(1 for c in checks if c.get("passed"))
        inputs = entry.get("inputs") or {}
        table.add_row(
            str(entry.get("version", "")),
            str(entry.get("run_id", "")),
            str(entry.get("published_at", "")),
            str(entry.get("rows", "")),
            f"{passed}/{len(checks)} passed",
            str(entry.get("build") or ""),
            ", ".join(
                f"{name} v{i.get('delta_version')} (+{len(i.get('raw_runs') or [])} raw)"
                for name, i in inputs.items()
            ),
        )
    console.print(table)
    return 0


# ---- init ----------------------------------------------------------------------------------
def example_dir() -> Path:
    """The shop example: packaged with the wheel, or the repository's examples/shop."""
    packaged = Path(__file__).parent / "_examples" / "shop"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "examples" / "shop"


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.directory)
    if target.exists() and any(target.iterdir()):
        raise CliError(f"{target} is not empty; choose a new folder")
    source = example_dir()
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("lake", "__pycache__"))
    # Named after its folder: two pipelines named alike would be one DAG id in Airflow.
    name = re.sub(r"[^a-z0-9]+", "_", target.resolve().name.lower()).strip("_")
    name = name if re.match(r"^[a-z]", name) else f"pipeline_{name}".rstrip("_")
    pipeline = target / "pipeline.yaml"
    text = pipeline.read_text(encoding="utf-8")
    pipeline.write_text(re.sub(r"(?m)^name: shop$", f"name: {name}", text, count=1), "utf-8")
    path = shlex.quote(str(pipeline))
    console.print(
        f"[green]created[/green] {pipeline} (pipeline {name}) from the shop example\n"
        f"  next: raw2gold validate {path} && raw2gold run {path}",
        soft_wrap=True,
    )
    return 0


# ---- sources -------------------------------------------------------------------------------
def cmd_sources(args: argparse.Namespace) -> int:
    from raw2gold.ingest import check_source, discover_source

    config = _load(args)
    if args.source not in config.sources:
        raise CliError(f"no source {args.source!r}; known: {', '.join(config.sources)}")
    if args.action == "check":
        ok, message = check_source(config, args.source)
        console.print(
            f"{'[green]ok[/green]' if ok else '[red]failed[/red]'} {args.source}: {message}"
        )
        return 0 if ok else 1
    streams = discover_source(config, args.source)
    table = _table(f"streams of {args.source}", ("stream", "sync modes", "cursor", "primary key"))
    for stream in streams:
        table.add_row(
            str(stream.get("name")),
            ", ".join(stream.get("supported_sync_modes", [])),
            str(stream.get("default_cursor_field") or ""),
            str(stream.get("source_defined_primary_key") or ""),
        )
    console.print(table)
    return 0


# ---- airflow / trigger ---------------------------------------------------------------------
def cmd_airflow(args: argparse.Namespace) -> int:
    from raw2gold.orchestrate.local_airflow import AirflowError

    try:
        return _airflow(args)
    except AirflowError as exc:
        raise CliError(str(exc)) from exc


def _airflow(args: argparse.Namespace) -> int:
    from raw2gold.orchestrate import local_airflow

    if args.action == "up":
        console.print(f"starting Airflow on 127.0.0.1:{args.port} (four processes, ~30-60 s)")
        started = local_airflow.up(
            pipelines=args.pipelines or ["pipeline.yaml"],
            port=args.port,
            db_url=args.db_url,
            progress=lambda message: console.print(f"  … {message}"),
        )
        console.print(
            f"[green]Airflow is up[/green] at {started.url}\n"
            f"  user: {started.username}  password: {started.password()}\n"
            f"  pipelines: {started.pipelines}\n  db: {started.db}\n"
            f"  logs: {local_airflow.run_dir()}/*.log · stop with: raw2gold airflow down"
        )
        return 0
    if args.action == "down":
        stopped = local_airflow.down(timeout=args.timeout, say=console.print)
        console.print("stopped the local Airflow" if stopped else "no local Airflow is running")
        return 0
    state, alive, report = local_airflow.status()
    if state is None:
        console.print("no local Airflow recorded (start one with `raw2gold airflow up`)")
        return 1
    console.print(f"Airflow at {state.url} · db {state.db} · pipelines {state.pipelines}")
    for component in state.components:
        mark = "[green]alive[/green]" if alive.get(component.name) else "[red]dead[/red]"
        part = (report or {}).get(component.name.replace("-", "_"), {})
        health = part.get("status", "") if isinstance(part, dict) else ""
        if component.name == "api-server" and report is not None:
            health = "answering"
        console.print(f"  {component.name:<14} pid {component.pid:<8} {mark} {health}")
    healthy = local_airflow.is_healthy(report)
    console.print(f"  health: {'[green]healthy[/green]' if healthy else '[red]unhealthy[/red]'}")
    return 0 if healthy and all(alive.values()) else 1


# ---- spark-server ---------------------------------------------------------------------------
def cmd_spark_server(args: argparse.Namespace) -> int:
    from raw2gold.lake import Lake
    from raw2gold.transform.connect import answering, shared_record, stop_shared_server

    config = _load(args)
    if args.action == "stop":
        stop_shared_server(config, console.print)
        return 0
    record = Lake(config.lake).read_record(shared_record(config.name))
    if not record or record.get("stopped_at"):
        console.print(f"no shared Spark Connect server of {config.name} on this host")
        return 1
    alive = answering(record)
    state = "[green]answering[/green]" if alive else "[red]not answering[/red]"
    console.print(
        f"shared Spark Connect server of {config.name}: {record['url']} pid {record['pid']} "
        f"{state}, up since {record['started_at']}, log {record['log']}"
    )
    return 0 if alive else 1


def cmd_trigger(args: argparse.Namespace) -> int:
    import httpx

    from raw2gold.orchestrate.local_airflow import AirflowError

    try:
        return _trigger(args)
    except AirflowError as exc:
        raise CliError(str(exc)) from exc
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach Airflow ({exc}); check `raw2gold airflow status`") from exc


def _trigger(args: argparse.Namespace) -> int:
    from raw2gold.orchestrate.local_airflow import client_from_state
    from raw2gold.orchestrate.trigger import (
        TaskChange,
        follow_run,
        parse_params,
        resolve_dag_id,
        start_run,
    )

    try:
        conf = parse_params(args.param or [])
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    dag_id = resolve_dag_id(args.target)
    client = client_from_state(args.url, args.user, args.password)
    try:
        run_id = start_run(client, dag_id, conf)
        console.print(f"triggered [bold]{dag_id}[/bold] run {run_id} at {client.url}")
        if args.no_wait:
            return 0
        marks = {"success": "[green]✔[/green]", "failed": "[red]✘[/red]"}

        def show(change: TaskChange) -> None:
            mark = marks.get(change.state, "[cyan]…[/cyan]")
            took = f" in {change.duration:.1f}s" if change.duration else ""
            console.print(
                f"  {mark} {change.task_id} {change.state} (try {change.try_number}){took}"
            )

        result = follow_run(client, dag_id, run_id, on_change=show)
    finally:
        client.close()
    if not result.ok:
        failed = ", ".join(result.failed_tasks) or "no task failed"
        raise CliError(f"run {run_id} of {dag_id} {result.state}: failed task(s): {failed}")
    console.print(f"[green]run {run_id} succeeded[/green] in {result.seconds:.0f}s")
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of `raw2gold`."""
    top = argparse.ArgumentParser(
        prog="raw2gold", description="Airbyte -> raw -> Spark processed -> gold, via Airflow."
    )
    top.add_argument("--verbose", action="store_true", help="show tracebacks")
    sub = top.add_subparsers(dest="command", required=True)

    def with_pipeline(p: argparse.ArgumentParser, positional: bool = False) -> None:
        if positional:
            p.add_argument("pipeline", help="path of a pipeline.yaml")
        else:
            p.add_argument("-p", "--pipeline", default="pipeline.yaml", help="pipeline.yaml path")
        p.add_argument("--lake", help="override the lake URI (a folder or s3://bucket/prefix)")

    validate = sub.add_parser("validate", help="check a pipeline.yaml and list every problem")
    with_pipeline(validate, positional=True)
    validate.set_defaults(func=cmd_validate)

    run = sub.add_parser("run", help="run the pipeline once through Airflow")
    with_pipeline(run, positional=True)
    run.add_argument("--full-refresh", action="store_true", help="rebuild from all raw runs")
    landing = run.add_mutually_exclusive_group()
    landing.add_argument("--sources", nargs="+", metavar="SOURCE", help="ingest only these")
    landing.add_argument(
        "--no-ingest", action="store_true", help="land nothing; transform what raw holds"
    )
    run.set_defaults(func=cmd_run)

    show = sub.add_parser("show", help="first rows and row count of a gold table")
    show.add_argument("table")
    with_pipeline(show)
    show.add_argument("--limit", type=int, default=10)
    show.add_argument(
        "--as-of", metavar="RUN", help="the table as that run published it (raw2gold history)"
    )
    show.set_defaults(func=cmd_show)

    history = sub.add_parser("history", help="publish history (lineage) of a gold table")
    history.add_argument("table")
    with_pipeline(history)
    history.add_argument("--json", action="store_true")
    history.set_defaults(func=cmd_history)

    quarantine = sub.add_parser(
        "quarantine", help="rows a processed table could not type: why, from which raw runs"
    )
    quarantine.add_argument("table", help="a processed table")
    with_pipeline(quarantine)
    quarantine.add_argument("--run", help="only the rows of this raw run (or quarantined by it)")
    quarantine.add_argument("--limit", type=int, default=10, help="rows shown whole")
    quarantine.add_argument("--json", action="store_true")
    quarantine.set_defaults(func=cmd_quarantine)

    maintain = sub.add_parser(
        "maintain", help="OPTIMIZE and VACUUM the Delta tables (pipeline.yaml maintenance)"
    )
    with_pipeline(maintain)
    maintain.set_defaults(func=cmd_maintain)

    init = sub.add_parser("init", help="scaffold a new pipeline from the shop example")
    init.add_argument("directory")
    init.set_defaults(func=cmd_init)

    sources = sub.add_parser("sources", help="ask a source's connector: check or discover")
    sources.add_argument("action", choices=["check", "discover"])
    sources.add_argument("source")
    with_pipeline(sources)
    sources.set_defaults(func=cmd_sources)

    airflow = sub.add_parser("airflow", help="a local Airflow on 127.0.0.1: up, down, status")
    airflow.add_argument("action", choices=["up", "down", "status"])
    airflow.add_argument(
        "--pipelines", nargs="+", metavar="GLOB", help="pipeline files (default: pipeline.yaml)"
    )
    airflow.add_argument("--port", type=int, default=8080, help="api-server port (up)")
    airflow.add_argument(
        "--db-url",
        help="metadata DB connection string (default: SQLite; env RAW2GOLD_AIRFLOW_DB_URL)",
    )
    airflow.add_argument("--timeout", type=float, default=30.0, help="seconds to wait on down")
    airflow.set_defaults(func=cmd_airflow)

    server = sub.add_parser(
        "spark-server", help="the pipeline's shared Spark Connect server here: status, stop"
    )
    server.add_argument("action", choices=["status", "stop"])
    with_pipeline(server)
    server.set_defaults(func=cmd_spark_server)

    trigger = sub.add_parser("trigger", help="start a run on the local Airflow and follow it")
    trigger.add_argument("target", metavar="PIPELINE_OR_DAG_ID")
    trigger.add_argument(
        "--param", action="append", metavar="K=V", help="run parameter (JSON value if it parses)"
    )
    trigger.add_argument("--no-wait", action="store_true", help="do not follow the run")
    trigger.add_argument("--url", help="Airflow base URL (default: the local Airflow)")
    trigger.add_argument("--user", help="user name with --url")
    trigger.add_argument("--password", help="password with --url")
    trigger.set_defaults(func=cmd_trigger)
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/red] {escape(str(problem))}", soft_wrap=True)
        err.print(f"{len(exc.problems)} problem(s) found.")
        return 2
    except CliError as exc:
        err.print(f"[red]raw2gold:[/red] {escape(str(exc))}", soft_wrap=True)
        return 1
    except KeyboardInterrupt as exc:
        err.print(f"raw2gold: interrupted{': ' + escape(str(exc)) if str(exc) else ''}")
        return 130
    except Raw2GoldError as exc:  # its message is for people already
        if args.verbose:
            traceback.print_exc()
        err.print(f"[red]raw2gold:[/red] {escape(first_line(exc))}", soft_wrap=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for users, traceback on request
        if args.verbose:
            traceback.print_exc()
        err.print(
            f"[red]raw2gold:[/red] {type(exc).__name__}: {escape(first_line(exc))} "
            "(run with --verbose for details)",
            soft_wrap=True,
        )
        return 1


def entrypoint() -> None:
    """Console-script entry: run `main`, then leave without native teardown (see process_exit)."""
    exit_now(main())


if __name__ == "__main__":
    entrypoint()
