"""Runs of one lake that build on each other, for test modules that follow a lake run after run.

A test asks for the step it needs with :meth:`Story.reach`. The steps before it that have not
run yet run first, so a test picked alone (``pytest -k``) sees the same lake as it does when the
module runs in order; each step runs once and its result is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Story:
    """Named steps in order; ``reach(name)`` runs the steps up to ``name`` that have not run."""

    def __init__(self, steps: list[tuple[str, Callable[[], Any]]]) -> None:
        self.steps = steps
        self.results: dict[str, Any] = {}

    def reach(self, name: str) -> Any:
        """The result of step ``name``, with the lake as that step left it.

        Fails when a later step has already run: the lake has moved on, and a test that looks
        at it would see another state than the one it was written for.
        """
        index = [step for step, _ in self.steps].index(name)
        done = len(self.results)
        if done > index + 1:
            raise AssertionError(
                f"story step {name!r}: the lake is already at step {self.steps[done - 1][0]!r}; "
                "run this module's tests in file order"
            )
        for step, run in self.steps[done : index + 1]:
            self.results[step] = run()
        return self.results[name]
