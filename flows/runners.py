"""Task runners for the per-scan tasks: threads, processes or a Dask cluster."""

from __future__ import annotations

from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from flows.config import BuildConfig


def make_task_runner(config: BuildConfig):
    """Return the Prefect task runner that ``config.task_runner`` names.

    ``dask`` connects to ``config.dask_address`` when it is set, and otherwise
    starts a local cluster of ``max_workers`` single-threaded worker processes.
    """
    if config.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=config.max_workers)
    if config.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=config.max_workers)
    from prefect_dask import DaskTaskRunner

    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    return DaskTaskRunner(
        # The local cluster listens on loopback only and starts no dashboard.
        cluster_kwargs={"n_workers": config.max_workers, "threads_per_worker": 1, "processes": True,
                        "host": "127.0.0.1", "dashboard_address": None},
    )


def runner_kind(runner) -> str:
    """Return ``threads``, ``processes`` or ``dask`` for a Prefect task runner, or its class name."""
    if isinstance(runner, ThreadPoolTaskRunner):
        return "threads"
    if isinstance(runner, ProcessPoolTaskRunner):
        return "processes"
    name = type(runner).__name__
    return "dask" if name == "DaskTaskRunner" else name


def runner_mismatch(config: BuildConfig, runner) -> str | None:
    """Explain why ``config.task_runner`` has no effect on a run that uses ``runner``, or return None.

    A served ``build-dataset`` deployment keeps the task runner that
    ``fossil-slices serve`` gave it, whatever runner the UI form names.
    """
    kind = runner_kind(runner)
    if kind == config.task_runner:
        return None
    return (
        f"task_runner {config.task_runner!r} in the parameters is ignored: this run's tasks run on {kind}, "
        "chosen when the flow was started or served (fossil-slices serve --task-runner)"
    )
