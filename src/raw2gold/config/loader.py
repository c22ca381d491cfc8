"""Load a pipeline.yaml into :class:`PipelineConfig`, reporting every problem with its location."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from raw2gold.config.models import (
    NOT_SECRET_SUFFIXES,
    SECRET_KEY_PARTS,
    GoldModel,
    PipelineConfig,
    ProcessedModel,
    SourceConfig,
)

REF_IN_SQL = re.compile(r"\{\{\s*ref\(\s*['\"]([A-Za-z0-9_]+)['\"]\s*\)\s*\}\}")
REF_IN_PYTHON = re.compile(r"\bref\(\s*['\"]([A-Za-z0-9_]+)['\"]\s*\)")
ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Problem:
    """One problem in a pipeline file, with where it is and what to do."""

    file: str
    line: int | None
    location: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        location = f" {self.location}:" if self.location else ""
        text = f"{where}:{location} {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class ConfigError(Exception):
    """The pipeline file has problems; ``problems`` lists every one. Final: a retry reads the
    same file."""

    final = True

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        first = str(problems[0]) if problems else "invalid pipeline"
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(first + more)


class _TextDates(yaml.SafeLoader):
    """YAML's safe loader, except that dates and times stay the text they are written as: a
    connector's ``start_date: 2024-01-01T00:00:00Z`` reaches it so, not re-written from a
    datetime as ``+00:00`` (which connectors' patterns refuse), and ``2026-13-01`` is a value
    validation names, not a crash of the parser."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


class _LineLoader(_TextDates):
    """A YAML loader that remembers the line of every mapping key and sequence item."""


def _compose_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path (as strings) to its 1-based line number."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, str(key.value))
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = (*path, str(index))
                lines[child] = item.start_mark.line + 1
                walk(item, child)

    if root is not None:
        walk(root, ())
    return lines


def _line_for(lines: dict[tuple[str, ...], int], path: tuple[str, ...]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


HINTS = {
    "extra_forbidden": "remove it or check its spelling against docs/pipeline-config.md",
    "missing": "add this key",
    "literal_error": "use one of the values listed",
    "string_pattern_mismatch": "names are lower_snake_case",
}


def _validation_problems(
    error: ValidationError, file: str, lines: dict[tuple[str, ...], int]
) -> list[Problem]:
    problems = []
    for item in error.errors():
        path = tuple(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = f"unknown key {path[-1]!r}"
        problems.append(
            Problem(
                file, _line_for(lines, path), ".".join(path), message, HINTS.get(item["type"], "")
            )
        )
    return problems


def read_pipeline_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """Parse the YAML file; a syntax error is one :class:`ConfigError` with its line."""
    if not path.is_file():
        raise ConfigError(
            [Problem(str(path), None, "", "file not found", "give the path of a pipeline.yaml")]
        )
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.load(text, Loader=_TextDates)  # a safe loader: dates stay text
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            [Problem(str(path), line, "", f"YAML syntax error: {problem}", "fix the indentation")]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem(str(path), 1, "", "the file is not a mapping", "start with 'name: ...'")]
        )
    return data, _compose_lines(text)


def model_refs(config: PipelineConfig, table: str) -> list[str]:
    """The tables a gold model reads, from {{ ref('x') }} in SQL or ref('x') in Python."""
    model = config.gold[table]
    if model.sql:
        path = config.base_dir / model.sql
        pattern = REF_IN_SQL
    else:
        assert model.python is not None
        path = config.base_dir / model.python.split(":")[0]
        pattern = REF_IN_PYTHON
    if not path.is_file():
        return []
    return sorted(set(pattern.findall(path.read_text(encoding="utf-8"))))


def _all_table_names(data: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for section in ("processed", "gold"):
        if isinstance(data.get(section), dict):
            names |= {str(k) for k in data[section]}
    return names


def _valid_part(data: dict[str, Any]) -> PipelineConfig | None:
    """The config with only its valid entries, so cross-checks can run despite shape problems."""
    sections: dict[str, type[BaseModel]] = {
        "sources": SourceConfig,
        "processed": ProcessedModel,
        "gold": GoldModel,
    }
    clean: dict[str, Any] = {"name": "partial"}
    for key, model in sections.items():
        entries = data.get(key)
        if not isinstance(entries, dict):
            continue
        kept = {}
        for name, body in entries.items():
            # An entry whose only problem is a check still takes part in the cross-checks.
            candidates = [body]
            if isinstance(body, dict) and "checks" in body:
                candidates.append({k: v for k, v in body.items() if k != "checks"})
            for candidate in candidates:
                try:
                    model.model_validate(candidate)
                except ValidationError:
                    continue
                kept[name] = candidate
                break
        clean[key] = kept
    if not clean.get("sources"):
        clean["sources"] = {
            "placeholder": {
                "connector": {"package": "x", "version": "1"},
                "streams": [{"name": "x"}],
            }
        }
    try:
        return PipelineConfig.model_validate(clean)
    except ValidationError:
        return None


def _semantic_problems(
    config: PipelineConfig,
    file: str,
    lines: dict[tuple[str, ...], int],
    known_tables: set[str] | None = None,
) -> list[Problem]:
    problems: list[Problem] = []

    def add(path: tuple[str, ...], message: str, hint: str = "") -> None:
        problems.append(Problem(file, _line_for(lines, path), ".".join(path), message, hint))

    for name, model in config.processed.items():
        source_name, _, stream_name = model.source.partition(".")
        source = config.sources.get(source_name)
        if source is None:
            add(
                ("processed", name, "source"),
                f"source {source_name!r} does not exist",
                f"known sources: {', '.join(sorted(config.sources))}",
            )
        elif stream_name not in {s.name for s in source.streams}:
            add(
                ("processed", name, "source"),
                f"source {source_name!r} has no stream {stream_name!r}",
                f"its streams: {', '.join(s.name for s in source.streams)}",
            )
        if name in config.gold:
            add(("gold", name), f"table {name!r} is both processed and gold", "rename one of them")

    tables = set(config.processed) | set(config.gold) | (known_tables or set())
    graph: dict[str, set[str]] = {}
    for name, gold in config.gold.items():
        if gold.sql:
            if not (config.base_dir / gold.sql).is_file():
                add(
                    ("gold", name, "sql"),
                    f"SQL file {gold.sql} not found",
                    "path is relative to the yaml",
                )
        else:
            assert gold.python is not None
            module, _, function = gold.python.partition(":")
            if not function:
                add(
                    ("gold", name, "python"),
                    "expected module.py:function",
                    "e.g. models/top.py:build",
                )
            elif not (config.base_dir / module).is_file():
                add(
                    ("gold", name, "python"),
                    f"Python file {module} not found",
                    "path is relative to the yaml",
                )
        refs = model_refs(config, name)
        for ref in refs:
            if ref not in tables:
                add(
                    ("gold", name),
                    f"refers to table {ref!r}, which does not exist",
                    f"known tables: {', '.join(sorted(tables))}",
                )
        graph[name] = {r for r in refs if r in config.gold}
        if gold.incremental:
            for table in gold.incremental.inputs:
                if table not in config.processed or table not in refs:
                    add(
                        ("gold", name, "incremental", "inputs", table),
                        f"{table!r} is not a processed table this model refers to",
                        f"the model reads: {', '.join(refs) or 'no tables'}",
                    )

    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        add(("gold",), f"models form a cycle: {cycle}", "a model cannot depend on itself")

    for kind, models in (("processed", config.processed), ("gold", config.gold)):
        for name, table_model in models.items():
            for index, check in enumerate(table_model.checks):
                if check.type == "relationships" and check.to:
                    target = check.to.split(".")[0]
                    if target not in tables:
                        add(
                            (kind, name, "checks", str(index), "to"),
                            f"relationships check refers to unknown table {target!r}",
                        )
    for name, source in config.sources.items():
        for path in inline_credentials(source.config):
            key = next(p for p in reversed(path) if not p.isdigit())
            add(
                ("sources", name, "config", *path),
                "a credential is written inline (it would sit in the file, the DAG and the logs)",
                f"use an environment reference such as ${{{key.upper()}}}, masked in logs",
            )
        if source.connector and source.connector.manifest:
            if not (config.base_dir / source.connector.manifest).is_file():
                add(
                    ("sources", name, "connector", "manifest"),
                    f"manifest {source.connector.manifest} not found",
                    "path is relative to the yaml",
                )
    return problems


def inline_credentials(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Where a connector config holds a credential's value itself: a non-empty string under a
    key naming a password, secret, token or key, with no ``${ENV}`` reference in it."""
    found: list[tuple[str, ...]] = []
    if isinstance(value, dict):
        for key, child in value.items():
            found += inline_credentials(child, (*path, str(key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += inline_credentials(child, (*path, str(index)))
    elif isinstance(value, str) and value and path:
        key = next((p for p in reversed(path) if not p.isdigit()), "").lower()
        secret = any(part in key for part in SECRET_KEY_PARTS)
        refs = [m for m in ENV_PATTERN.findall(value) if m != "PIPELINE_DIR"]
        if secret and not key.endswith(NOT_SECRET_SUFFIXES) and not refs:
            found.append(path)
    return found


def load_pipeline(path: str | Path, lake_uri: str | None = None) -> PipelineConfig:
    """Load and fully validate a pipeline file; raise :class:`ConfigError` listing all problems.

    ``lake_uri`` (or the RAW2GOLD_LAKE_URI environment variable) overrides the lake location.
    A relative local lake path is resolved against the current directory when overridden, and
    against the yaml's folder when it comes from the file.
    """
    path = Path(path).resolve()
    data, lines = read_pipeline_yaml(path)
    file = str(path)
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = _validation_problems(exc, file, lines)
        partial = _valid_part(data)
        if partial is not None:
            partial = partial.model_copy(update={"base_dir": path.parent, "path": path})
            problems += _semantic_problems(partial, file, lines, _all_table_names(data))
        raise ConfigError(sorted(problems, key=lambda p: p.line or 0)) from None
    override = lake_uri or os.environ.get("RAW2GOLD_LAKE_URI")
    uri = override or config.lake.uri
    if "://" not in uri:
        base = Path.cwd() if override else path.parent
        uri = str((base / uri).resolve())
    config = config.model_copy(
        update={
            "base_dir": path.parent,
            "path": path,
            "lake": config.lake.model_copy(update={"uri": uri}),
        }
    )
    problems = _semantic_problems(config, file, lines)
    if problems:
        raise ConfigError(problems)
    return config


def resolve_env(value: str) -> str:
    """Replace ${VAR} references with the environment's values; a missing one is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(
                [Problem("environment", None, name, "variable is not set", f"export {name}=...")]
            )
        return os.environ[name]

    return ENV_PATTERN.sub(replace, value)


def resolve_env_tree(value: Any) -> Any:
    """resolve_env over every string of a nested dict/list (connector configs)."""
    if isinstance(value, str):
        return resolve_env(value)
    if isinstance(value, dict):
        return {k: resolve_env_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env_tree(v) for v in value]
    return value


def gold_order(config: PipelineConfig) -> list[str]:
    """Gold tables in dependency order."""
    graph = {
        name: {r for r in model_refs(config, name) if r in config.gold} for name in config.gold
    }
    return list(TopologicalSorter(graph).static_order())


def pipeline_files(spec: str) -> list[Path]:
    """The files ``spec``'s paths and globs (os.pathsep-separated, ``~`` expanded) name; a
    glob that matches nothing stays as it is, for the caller to report."""
    import glob

    paths: list[Path] = []
    for pattern in filter(None, spec.split(os.pathsep)):
        pattern = os.path.expanduser(pattern)
        paths.extend(Path(m) for m in (sorted(glob.glob(pattern)) or [pattern]))
    return paths


def load_pipelines(paths: list[Path]) -> list[PipelineConfig]:
    """Load several pipeline files (:func:`load_pipeline`); any problem of any file is a
    :class:`ConfigError` (with every file's problems), and so are two of the same name: in
    Airflow they would be one DAG, one hiding the other."""
    configs, problems = load_valid_pipelines(paths)
    if problems:
        raise ConfigError(problems)
    return configs


def load_valid_pipelines(paths: list[Path]) -> tuple[list[PipelineConfig], list[Problem]]:
    """Load each pipeline file on its own: (the valid ones, the problems of the others). A file
    whose name an earlier file took is a problem of the later file."""
    configs: list[PipelineConfig] = []
    problems: list[Problem] = []
    first: dict[str, Path] = {}
    for path in paths:
        try:
            config = load_pipeline(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if config.name in first:
            lines = _compose_lines(Path(path).read_text(encoding="utf-8"))
            problems.append(
                Problem(
                    str(path),
                    _line_for(lines, ("name",)),
                    "name",
                    f"pipeline {config.name!r} is also the name of {first[config.name]}: "
                    f"Airflow would have one DAG (raw2gold_{config.name}) for both",
                    "give one of them another name",
                )
            )
            continue
        first[config.name] = Path(path)
        configs.append(config)
    return configs, problems
