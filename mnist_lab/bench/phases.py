"""Phases run in order of value inside a time budget: the planner of `make gpu-check`.

A GPU machine is lent for minutes, so the check runs its most valuable phase first and starts a
phase only if its estimate fits in what is left of the budget; a phase that would overrun is
skipped and named, never started and cut off halfway. A phase that fails is recorded and the
next one still runs.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    key: str
    estimate: float  # seconds on one H200 (docs/performance.md says where each comes from)
    run: Callable[[], dict]


def run_phases(phases: list[Phase], *, budget: float, started: float, skip=(), clock=time.monotonic,
               on_phase: Callable[[str, dict], None] = lambda key, result: None, printer=print) -> dict[str, dict]:
    """Run `phases` in their order; returns each one's result, with "seconds" for those that ran,
    "skipped" (why) or "error" (what) for the others. `started`: the `clock()` the budget counts from."""
    results: dict[str, dict] = {}
    for phase in phases:
        left = budget - (clock() - started)
        if phase.key in skip:
            result = {"skipped": "--skip"}
        elif phase.estimate > left:
            result = {"skipped": f"would overrun: needs about {phase.estimate:.0f} s, "
                                 f"{max(left, 0):.0f} s of the {budget:.0f} s budget left"}
        else:
            printer(f"gpu-check: {phase.key} (about {phase.estimate:.0f} s; {left:.0f} s left)")
            start = clock()
            try:
                result = dict(phase.run())
            except Exception as error:  # recorded; the phases after it still run
                traceback.print_exc()
                result = {"error": f"{type(error).__name__}: {error}"}
            result["seconds"] = round(clock() - start, 1)
            printer(f"gpu-check: {phase.key} done in {result['seconds']:.0f} s")
        results[phase.key] = result
        on_phase(phase.key, result)
    return results
