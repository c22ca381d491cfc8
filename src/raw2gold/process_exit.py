"""Leaving a raw2gold process without the interpreter's native teardown.

pyarrow, delta-rs and the JVM bridge keep native thread pools. Tearing them down during the
interpreter's final cleanup can abort a process whose work is finished and printed
("terminate called without an active exception", exit -6), which turns a successful command or
Spark stage into a failure. Entry points therefore flush what they own and leave with `os._exit`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Flush logging, stdout and stderr, then end the process with `code`."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
