"""Progress of the build stages: a terminal bar for the CLI, log lines everywhere.

The command line turns bars on with :func:`enable_bars`. Runs started from the
Prefect UI or by a deployment keep them off and only log each stage.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_bars_enabled = False


def enable_bars(enabled: bool = True) -> None:
    """Show a progress bar on stderr for each stage of builds in this process."""
    global _bars_enabled
    _bars_enabled = enabled and sys.stderr.isatty()


class _Stage:
    def __init__(self, progress: Progress | None, task_id, logger: logging.Logger, name: str, total: int):
        self._progress = progress
        self._task_id = task_id
        self._logger = logger
        self._name = name
        self._total = total
        self.done = 0

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self._progress is not None:
            self._progress.update(self._task_id, advance=count)


@contextmanager
def stage(logger: logging.Logger, name: str, total: int) -> Iterator[_Stage]:
    """Report a build stage of ``total`` steps: a bar in a terminal, a log line at start and end."""
    logger.info("%s: %d to do", name, total)
    if not _bars_enabled:
        tracker = _Stage(None, None, logger, name, total)
        yield tracker
        logger.info("%s: done (%d of %d)", name, tracker.done, total)
        return
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task_id = progress.add_task(name, total=total)
        tracker = _Stage(progress, task_id, logger, name, total)
        yield tracker
    logger.info("%s: done (%d of %d)", name, tracker.done, total)
