"""One line of an error for people: Spark's errors through Py4J, Spark Connect or Python alike."""

from __future__ import annotations

import os
import re
import traceback


class Raw2GoldError(RuntimeError):
    """An error whose message is written for people: one line saying what failed and what to do
    (the command line prints it as it is; ``--verbose`` adds the traceback).

    ``final`` says that running the same task again would fail the same way (a failed check, a
    model's mistake, data or config that only a person can change), so Airflow should not spend
    its retries on it. Subclasses set the default; ``final=`` overrides it for one error.
    """

    final = False

    def __init__(self, *args: object, final: bool | None = None) -> None:
        super().__init__(*args)
        if final is not None:
            self.final = final


# Python errors that a model's own code makes the same way on every try
_CODE_MISTAKES = (NameError, TypeError, AttributeError, KeyError, ImportError, SyntaxError)


def is_final(error: BaseException) -> bool:
    """Whether retrying cannot help: a raw2gold error marked final, Spark's analysis errors
    (unknown columns or tables, SQL syntax, type mismatches: the same on every try), or a
    Python error that is a mistake in code."""
    if hasattr(error, "final"):  # raw2gold's errors (and ConfigError) say it themselves
        return bool(error.final)
    if isinstance(error, _CODE_MISTAKES):
        return True
    try:
        from pyspark.errors import AnalysisException
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return False
    return isinstance(error, AnalysisException)


# Spark's error classes lead its messages: "[FAILED_READ_FILE.CANNOT_READ_FILE_FOOTER] ..."
ERROR_CLASS = re.compile(r"\[([A-Z][A-Z0-9_]*(?:\.[A-Z][A-Z0-9_]*)*)\]")
SQLSTATE = re.compile(r"\s*SQLSTATE: \w+\s*$")


def _java_message(error: object, root: bool = False) -> str | None:
    """The message of a Py4J error's Java exception (or of its root cause); None otherwise."""
    java = getattr(error, "java_exception", None)
    if java is None:
        return None
    try:
        if root:
            while java.getCause() is not None:
                java = java.getCause()
        return str(java.getMessage() or java.toString())
    except Exception:  # the JVM is gone: Py4J's own text is all there is
        return None


def first_line(error: object) -> str:
    """The first non-empty line of an error's message (its type's name when it has none).

    A Py4J error's own first line is "An error occurred while calling o70.parquet.": its Java
    exception's message says what went wrong instead.
    """
    text = _java_message(error) or str(error if error is not None else "")
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__ if isinstance(error, BaseException) else ""


def root_cause(error: object) -> str:
    """The first line of the innermost Java cause of a Py4J error, else of the error itself,
    without Spark's error class and SQLSTATE."""
    text = _java_message(error, root=True)
    line = first_line(text) if text else first_line(error)
    return SQLSTATE.sub("", ERROR_CLASS.sub("", line, count=1)).strip()


def error_class(error: object) -> str | None:
    """Spark's error class of an error (``FAILED_READ_FILE.NO_HINT``), when it names one."""
    match = ERROR_CLASS.search(_java_message(error) or str(error or ""))
    return match.group(1) if match else None


def described(error: BaseException, in_file: str | None = None) -> str:
    """:func:`first_line` of an error raised by user code: a Python error led by its type
    (``KeyError: 'price'`` rather than ``'price'``; Spark's errors name their class already and
    raw2gold's own, e.g. a ``ref()`` of a table not built yet, are written for people),
    and with ``in_file`` the line of that file the error came from (``models/top.py:12``)."""
    text = first_line(error)
    spark_error = _java_message(error) is not None or error_class(error) is not None
    if not spark_error and not isinstance(error, Raw2GoldError) and text != type(error).__name__:
        text = f"{type(error).__name__}: {text}"
    if in_file:
        target = os.path.realpath(in_file)
        lines = [
            frame.lineno
            for frame in traceback.extract_tb(error.__traceback__)
            if os.path.realpath(frame.filename) == target
        ]
        if lines:
            text += f" (at {os.path.basename(in_file)}:{lines[-1]})"
    return text
