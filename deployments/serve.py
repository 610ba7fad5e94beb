"""Serve the ``build-dataset`` and ``rebuild-on-new-scans`` deployments from one long-running process.

``fossil-slices serve`` calls :func:`serve_deployments`. It registers both
deployments with the Prefect server that ``PREFECT_API_URL`` names, then
polls that server and runs each flow run in a child process of its own.
"""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

from prefect.runner import Runner
from prefect.exceptions import TerminationSignal
from prefect.settings import PREFECT_API_URL

from deployments.flows import rebuild_on_new_scans
from flows.build import build_dataset
from flows.config import BuildConfig
from flows.runners import make_task_runner

BUILD_DEPLOYMENT = "build-dataset"
REBUILD_DEPLOYMENT = "rebuild-on-new-scans"
RUNNER_NAME = "fossil-slices"


class ServeError(ValueError):
    """Deployments that cannot be served with the given arguments."""


def _check_serve_args(scans_dir: str, interval_minutes: float) -> None:
    if not PREFECT_API_URL.value():
        # The deployments must live on a server that outlives this process,
        # because the UI and the scheduler read them there.
        raise ServeError(
            "PREFECT_API_URL is not set; start a server with 'prefect server start' and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    if not Path(scans_dir).is_dir():
        raise ServeError(f"scans folder {scans_dir} not found; pass an existing folder with --scans")
    if not interval_minutes > 0:
        raise ServeError(f"interval of {interval_minutes} minutes is not positive; pass --interval MINUTES > 0")


def make_runner(scans_dir: str, out_dir: str, config: BuildConfig, interval_minutes: float = 15.0) -> Runner:
    """Return a Prefect runner with both deployments registered with the server.

    Parameters
    ----------
    scans_dir, out_dir : str
        Default scans folder and output folder of both deployments.
    config : BuildConfig
        Default build parameters; the UI shows them as a form with these values.
    interval_minutes : float
        Minutes between scheduled runs of ``rebuild-on-new-scans``.

    Returns
    -------
    prefect.Runner
        Registered but not started; ``await runner.start()`` serves it.
    """
    parameters = {"scans_dir": str(Path(scans_dir).resolve()), "out_dir": str(Path(out_dir).resolve()),
                  "config": config.model_dump(mode="json")}
    runner = Runner(name=RUNNER_NAME)
    # The runner keeps these flow objects in memory and runs them as they are,
    # so the task runner chosen here is the one a UI-started build uses.
    # NOTE: task_runner, max_workers and dask_address typed into the UI form of
    # build-dataset do not change its task runner; the serve flags fix it, and
    # the run logs a warning when the form names another runner.
    # rebuild-on-new-scans starts its build with the runner its form names.
    runner.add_flow(
        build_dataset.with_options(task_runner=make_task_runner(config)), name=BUILD_DEPLOYMENT,
        parameters=parameters, description="Build the slice dataset and catalogue; start runs from the UI.",
    )
    runner.add_flow(
        rebuild_on_new_scans, name=REBUILD_DEPLOYMENT, parameters=parameters,
        interval=datetime.timedelta(minutes=interval_minutes),
        description="Build when scans were added, changed or removed since the last build.",
    )
    return runner


def serve_deployments(scans_dir: str, out_dir: str, config: BuildConfig, interval_minutes: float = 15.0) -> None:
    """Serve ``build-dataset`` (manual runs) and ``rebuild-on-new-scans`` (every ``interval_minutes``).

    Blocks until the process is interrupted. Runs publish the build report
    as Prefect artifacts.

    Raises
    ------
    ServeError
        If ``PREFECT_API_URL`` is unset, the scans folder does not exist or
        the interval is not positive.
    """
    _check_serve_args(scans_dir, interval_minutes)
    runner = make_runner(scans_dir, out_dir, config, interval_minutes)
    print(
        f"serving '{build_dataset.name}/{BUILD_DEPLOYMENT}' and '{rebuild_on_new_scans.name}/{REBUILD_DEPLOYMENT}' "
        f"(checks every {interval_minutes:g} minutes) on {PREFECT_API_URL.value()}\n"
        f"start a build with: prefect deployment run '{build_dataset.name}/{BUILD_DEPLOYMENT}'",
        flush=True,
    )
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal):
        print("stopped serving", flush=True)
