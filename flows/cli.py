"""The ``fossil-slices`` command line.

Exit codes: 0 success, 1 the build failed, 2 invalid arguments or
configuration, 3 the leakage check failed, 4 no usable catalogue or another
build holds the lock, 5 a SQL statement was rejected or failed.
"""

from __future__ import annotations

import os

# Runs start without a Prefect server unless PREFECT_API_URL names one, and
# send no usage statistics anywhere.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# The temporary server can take longer than Prefect's 20 s default to start
# on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from pydantic import ValidationError  # noqa: E402

EXIT_OK, EXIT_BUILD_FAILED, EXIT_USAGE, EXIT_LEAKAGE, EXIT_CATALOGUE, EXIT_SQL = 0, 1, 2, 3, 4, 5

CONFIG_FLAGS = {
    # flag: (field, type, help)
    "--min-specimens": ("min_specimens", int, "distinct specimens a species needs (default 4)"),
    "--target-per-species": ("target_per_species", int, "slices to select per species (default 10000)"),
    "--test-fraction": ("test_fraction", float, "share of passing slices for test (default 0.20)"),
    "--val-target": ("val_target", int, "val slices to aim at per species (default 1000)"),
    "--val-cap": ("val_cap", int, "maximum val slices per species (default 1200)"),
    "--min-area-fraction": ("min_area_fraction", float, "mask area a slice needs to pass, 0..1 (default 0.02)"),
    "--image-size": ("image_size", int, "side of exported images in pixels (default 224)"),
    "--format": ("image_format", str, "png (8-bit RGB, default), png16 or npy"),
    "--seed": ("seed", int, "seed of the split and the sampling (default 42)"),
    "--task-runner": ("task_runner", str, "threads (default), processes or dask"),
    "--max-workers": ("max_workers", int, "parallel workers (default 2)"),
    "--dask-address": ("dask_address", str, "tcp://HOST:PORT of a Dask scheduler to use"),
    "--storage-dir": ("storage_dir", str, "folder for cached analyses (default OUT_DIR/storage)"),
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file with build parameters (keys as in the README)")
    for flag, (field, kind, text) in CONFIG_FLAGS.items():
        parser.add_argument(flag, dest=field, type=kind, default=None, help=text)
    parser.add_argument("--oblique", dest="oblique_views", action="store_const", const=True, default=None,
                        help="also measure and sample 24 oblique views (8 angles in 3 planes)")
    parser.add_argument("--resplit", action="store_const", const=True, default=None,
                        help="assign every specimen afresh instead of keeping earlier splits")
    parser.add_argument("--rehash", dest="rehash_scans", action="store_const", const=True, default=None,
                        help="hash every scan file again, even one whose size, times and inode are unchanged")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars, and no log line per Prefect task run")


def _config_from(args: argparse.Namespace):
    from flows.config import load_config

    overrides = {field: getattr(args, field) for field, _, _ in CONFIG_FLAGS.values()}
    overrides["oblique_views"] = args.oblique_views
    overrides["resplit"] = args.resplit
    overrides["rehash_scans"] = args.rehash_scans
    return load_config(args.config, overrides)


def _config_problem(error: Exception) -> str:
    """Return a configuration error as 'field: message' lines, without pydantic's links."""
    if not isinstance(error, ValidationError):
        return str(error)
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "configuration"
        lines.append(f"{field}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(lines)


def _run_build(scans_dir: Path, out_dir: Path, args: argparse.Namespace) -> int:
    from catalog.checks import LeakageError
    from catalog.store import CatalogueError, check_unlocked
    from flows import progress
    from flows.build import run_build

    try:
        config = _config_from(args)
    except (ValidationError, OSError, ValueError) as error:
        print(f"fossil-slices: invalid configuration: {_config_problem(error)}", file=sys.stderr)
        return EXIT_USAGE
    if not scans_dir.is_dir():
        print(f"fossil-slices: scans folder {scans_dir} not found", file=sys.stderr)
        return EXIT_USAGE
    # Check the lock before Prefect starts, which can take a minute on a busy
    # machine; the flow takes the lock again for the whole build.
    try:
        check_unlocked(out_dir)
    except CatalogueError as error:
        print(f"fossil-slices: {error}", file=sys.stderr)
        return EXIT_CATALOGUE
    progress.enable_bars(not args.quiet)
    if args.quiet:
        # Prefect logs every task run's start and end, and the build's own
        # lines already report what happened to each scan.
        logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)
    try:
        summary = run_build(str(scans_dir), str(out_dir), config)
    except LeakageError as error:
        print(f"fossil-slices: build failed: {error}", file=sys.stderr)
        return EXIT_LEAKAGE
    except CatalogueError as error:
        print(f"fossil-slices: {error}", file=sys.stderr)
        return EXIT_CATALOGUE
    except Exception as error:  # the flow has logged the details
        print(f"fossil-slices: build failed: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_BUILD_FAILED
    print(
        f"build {summary['build_id']}: {summary['images']} images in {out_dir}, "
        f"{summary['analyses_run']} {'analysis' if summary['analyses_run'] == 1 else 'analyses'} run, "
        f"{summary['analyses_cached']} reused from cache\n"
        f"dataset hash {summary['dataset_hash']}\nreport {summary['report']}"
    )
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    return _run_build(args.scans_dir, args.out_dir, args)


def cmd_demo(args: argparse.Namespace) -> int:
    from tasks.synthetic import write_collection

    scans_dir = args.out_dir / "scans"
    paths = write_collection(scans_dir, n_species=args.species, specimens_per_species=args.specimens,
                             shape=(args.size,) * 3, seed=args.demo_seed)
    print(f"wrote {len(paths)} synthetic scans to {scans_dir}")
    return _run_build(scans_dir, args.out_dir / "dataset", args)


def _open_catalogue(db: Path):
    """Open the catalogue in ``db`` read-only, or print why not and return None."""
    from catalog.sql import connect_read_only
    from catalog.store import CatalogueError

    try:
        return connect_read_only(db)
    except CatalogueError as error:
        print(f"fossil-slices: {error}", file=sys.stderr)
        return None


def cmd_sql(args: argparse.Namespace) -> int:
    from catalog.sql import ReadOnlyError, format_rows, run_query

    if (args.query is None) == (args.export is None):
        print("fossil-slices: give either a QUERY or --export DIR", file=sys.stderr)
        return EXIT_USAGE
    connection = _open_catalogue(args.db)
    if connection is None:
        return EXIT_CATALOGUE
    if args.export is not None:
        return _export(connection, args.export)
    try:
        columns, rows = run_query(connection, args.query)
    except ReadOnlyError as error:
        print(f"fossil-slices: {error}", file=sys.stderr)
        return EXIT_SQL
    except Exception as error:  # duckdb raises many error classes; all are query errors here
        print(f"fossil-slices: query failed: {error}", file=sys.stderr)
        return EXIT_SQL
    finally:
        connection.close()
    sys.stdout.write(format_rows(columns, rows, args.output_format))
    return EXIT_OK


def _export(connection, export_dir: Path) -> int:
    from catalog.sql import export_parquet

    try:
        files = export_parquet(connection, export_dir)
    except OSError as error:
        print(f"fossil-slices: cannot write Parquet files to {export_dir}: {error}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        connection.close()
    print(f"wrote {len(files)} Parquet files (every table and view) to {export_dir}")
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from catalog.diff import UnknownBuildError, diff_builds, format_diff

    connection = _open_catalogue(args.db)
    if connection is None:
        return EXIT_CATALOGUE
    try:
        diff = diff_builds(connection, args.build_a, args.build_b)
    except UnknownBuildError as error:
        print(f"fossil-slices: {error}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        connection.close()
    sys.stdout.write(format_diff(diff))
    return EXIT_OK


def cmd_split(args: argparse.Namespace) -> int:
    from catalog.explain import explain_split

    connection = _open_catalogue(args.db)
    if connection is None:
        return EXIT_CATALOGUE
    try:
        if args.build is not None:
            known = connection.execute("SELECT 1 FROM builds WHERE build_id = ? AND status = 'succeeded'",
                                       [args.build]).fetchone()
            if known is None:
                print(f"fossil-slices: no successful build {args.build} in {args.db}; "
                      "list them with: fossil-slices sql \"SELECT build_id, status FROM builds\" --db OUT",
                      file=sys.stderr)
                return EXIT_USAGE
        print(explain_split(connection, args.build, detail=args.explain))
    finally:
        connection.close()
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from catalog.store import CatalogueError
    from deployments.changes import describe_status

    try:
        text = describe_status(args.out, args.scans)
    except CatalogueError as error:
        print(f"fossil-slices: {error}", file=sys.stderr)
        return EXIT_CATALOGUE
    print(text)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from deployments.serve import ServeError, serve_deployments

    try:
        config = _config_from(args)
    except (ValidationError, OSError, ValueError) as error:
        print(f"fossil-slices: invalid configuration: {_config_problem(error)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        serve_deployments(str(args.scans), str(args.out), config, interval_minutes=args.interval)
    except ServeError as error:
        print(f"fossil-slices: cannot serve: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="fossil-slices",
        description="Turn folders of 3D micro-CT fossil scans into leak-free, balanced 2D slice datasets "
        "with a SQL catalogue.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build a dataset from a folder of scans")
    build.add_argument("scans_dir", type=Path, help="folder of .nii, .nii.gz, .tif or .tiff scans")
    build.add_argument("out_dir", type=Path, help="output folder for the dataset and its catalogue")
    _add_config_flags(build)
    build.set_defaults(handler=cmd_build)

    demo = commands.add_parser("demo", help="generate synthetic fossil scans and build a dataset from them")
    demo.add_argument("out_dir", type=Path, nargs="?", default=Path("demo-out"),
                      help="output folder; scans go to OUT_DIR/scans, the dataset to OUT_DIR/dataset "
                      "(default ./demo-out)")
    demo.add_argument("--species", type=int, default=4, help="number of species (default 4)")
    demo.add_argument("--specimens", type=int, default=5, help="specimens per species (default 5)")
    demo.add_argument("--size", type=int, default=48, help="edge of each synthetic scan in voxels (default 48)")
    demo.add_argument("--demo-seed", type=int, default=0, help="seed of the synthetic scans (default 0)")
    _add_config_flags(demo)
    demo.set_defaults(handler=cmd_demo)

    sql = commands.add_parser("sql", help="run a read-only SQL query on a catalogue")
    sql.add_argument("query", nargs="?", help='SQL query, e.g. "SELECT * FROM species"')
    sql.add_argument("--db", type=Path, required=True, help="output folder of a build, which contains catalogue.duckdb")
    sql.add_argument("--format", dest="output_format", choices=("table", "csv", "json"), default="table",
                     help="output format (default table)")
    sql.add_argument("--export", type=Path, default=None, metavar="DIR",
                     help="instead of a query, write every table and view to DIR/<name>.parquet")
    sql.set_defaults(handler=cmd_sql)

    diff = commands.add_parser("diff", help="compare two builds: split changes, images, train/test overlap")
    diff.add_argument("build_a", type=int, help="earlier build id (its test split is checked)")
    diff.add_argument("build_b", type=int, help="later build id (its train split is checked)")
    diff.add_argument("--db", type=Path, required=True, help="output folder of the builds, which contains catalogue.duckdb")
    diff.set_defaults(handler=cmd_diff)

    split = commands.add_parser("split", help="show how a build split the specimens of each species")
    split.add_argument("--db", type=Path, required=True, help="output folder of a build, which contains catalogue.duckdb")
    split.add_argument("--explain", action="store_true",
                       help="list every specimen with its passing slices and chosen split")
    split.add_argument("--build", type=int, default=None, help="build id (default: the latest successful build)")
    split.set_defaults(handler=cmd_split)

    status = commands.add_parser("status", help="show the last build and the scans waiting to be processed")
    status.add_argument("--out", type=Path, required=True, help="output folder of a build")
    status.add_argument("--scans", type=Path, default=None,
                        help="scans folder to compare with the catalogue (default: the last build's)")
    status.set_defaults(handler=cmd_status)

    serve = commands.add_parser("serve", help="serve the build-dataset and rebuild-on-new-scans deployments")
    serve.add_argument("--scans", type=Path, required=True, help="scans folder to watch")
    serve.add_argument("--out", type=Path, required=True, help="output folder of the dataset")
    serve.add_argument("--interval", type=float, default=15.0,
                       help="minutes between checks for new, changed or removed scans (default 15)")
    _add_config_flags(serve)
    serve.set_defaults(handler=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except BrokenPipeError:
        # The reader of our output (for example `head`) closed the pipe early.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
