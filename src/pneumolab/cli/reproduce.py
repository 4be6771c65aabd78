"""`pneumolab-report`: the course report's eight settings as one `pneumolab` sweep, then REPORT.md.

    pneumolab-report --data folder --root ~/chest_xray --out outputs/report
    pneumolab-report --epochs 2 --seeds 2 -- data.limit_per_class=30
    pneumolab-report --from-sweep outputs/report      # only rebuild REPORT.md

Re-running with the same --out skips the settings that already finished.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

from omegaconf import MISSING

from pneumolab.cli.exits import run_child, side_command
from pneumolab.cli.overrides import quote_path
from pneumolab.config import SCHEMAS
from pneumolab.files import atomic_write_text
from pneumolab.record.names import REPORT_MD, RUN_RECORD
from pneumolab.analysis.report import build_report, find_sweep_dir, has_jobs, report_experiments

DEFAULT_OUT = Path("outputs/report")


def sweep_overrides(
    sweep_dir: Path, data: str, root: str | None, epochs: int | None, seeds: int | None,
    launcher: str, jobs: int, extra: Sequence[str] = (),
) -> list[str]:
    """The `pneumolab -m` arguments that run all eight settings as one sweep into `sweep_dir`.

    Paths go in as the user typed them (the sweep runs in this working directory), so
    the command REPORT.md quotes is one the reader can type too.
    """
    # Hydra's glob() lists one directory level only, so `experiment=glob(report/*)` finds
    # nothing in the nested report/ group; the choices are listed explicitly instead.
    overrides = [
        "-m",
        "experiment=" + ",".join(report_experiments()),
        f"hydra.sweep.dir={quote_path(str(sweep_dir), as_typed=True)}",
        f"data={data}",
    ]
    if root is not None:
        overrides.append(f"data.{SCHEMAS['data'][data].location}={quote_path(root, as_typed=True)}")
    if epochs is not None:
        overrides.append(f"trainer.epochs={epochs}")
    if seeds is not None:
        overrides.append(f"trainer.seeds={seeds}")
    if launcher == "joblib":
        overrides += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    return overrides + list(extra)


def run_sweep(overrides: list[str], sweep_dir: Path, typed_paths: Sequence[str] = ()) -> int:
    """Run `pneumolab` with `overrides` in a child process; record the command, its wall time and
    the paths as typed (REPORT.md shows them so, not as the absolute paths of this machine)."""
    command = [sys.executable, "-m", "pneumolab.cli.main", *overrides]
    start = time.perf_counter()
    returncode = run_child(command)  # a stop signal reaches the sweep too
    record = {
        "command": shlex.join(["pneumolab", *overrides]),
        "typed_paths": [str(sweep_dir), *typed_paths],
        "wall_seconds": round(time.perf_counter() - start, 1),
        "returncode": returncode,
    }
    if returncode != 2:  # 2: refused before any job ran, so the record of the runs there stays theirs
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sweep_dir / RUN_RECORD, json.dumps(record, indent=2) + "\n")
    return returncode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pneumolab-report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=tuple(SCHEMAS["data"]), default="phantom",
                        help="data source (default: phantom, the embedded one)")
    parser.add_argument("--root", help="folder: the chest_xray directory; pneumoniamnist: a local npz "
                                       "(else it is downloaded)")
    parser.add_argument("--epochs", type=int, help="epochs per seed (default: the settings' 30)")
    parser.add_argument("--seeds", type=int, help="train seeds 0..N-1 (default: the report's five)")
    parser.add_argument("--out", type=Path, help=f"output directory (default: {DEFAULT_OUT}); the sweep goes to OUT/runs")
    parser.add_argument("--launcher", choices=("basic", "joblib"), default="joblib",
                        help="basic: one job after another; joblib (default): --jobs at a time")
    # Every job trains on one thread, so one job per core keeps the machine busy.
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1),
                        help="parallel jobs with --launcher joblib (default: one per core, at most 8)")
    parser.add_argument("--from-sweep", type=Path, metavar="DIR",
                        help="do not train: rebuild REPORT.md from the sweep in DIR (DIR/runs for an earlier "
                             "run of this script); written to --out, else into DIR")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. -- data.limit_per_class=30")
    args = parser.parse_args(argv)
    location = SCHEMAS["data"][args.data].location
    if location and getattr(SCHEMAS["data"][args.data], location) == MISSING and args.root is None and not args.from_sweep:
        parser.error(f"--data {args.data} needs --root, its data.{location} (for folder: the directory holding "
                     "train/ and test/)")
    if args.root is not None and location is None:
        parser.error(f"--root has no meaning for --data {args.data}, which reads no files; pick a source that does: "
                     f"{', '.join(name for name, schema in SCHEMAS['data'].items() if schema.location)}")
    if args.from_sweep and args.overrides:
        parser.error("--from-sweep only rebuilds the report; it takes no Hydra overrides")
    return args


@side_command("pneumolab-report")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    returncode = 0
    if args.from_sweep:
        sweep_dir = find_sweep_dir(args.from_sweep)
        out = args.out or args.from_sweep
    else:
        out = args.out or DEFAULT_OUT
        sweep_dir = out / "runs"
        overrides = sweep_overrides(sweep_dir, args.data, args.root, args.epochs, args.seeds,
                                    args.launcher, args.jobs, args.overrides)
        returncode = run_sweep(overrides, sweep_dir, [args.root] if args.root else [])
        if returncode == 2:
            # Refused before any job ran (its one paragraph is out), e.g. OUT/runs holds finished runs of other
            # settings: REPORT.md and the record of those runs are left as they are.
            return 2
    if not has_jobs(sweep_dir):
        print(f"pneumolab-report: no job finished or failed in {sweep_dir}: nothing to report.", file=sys.stderr)
        return returncode or 1
    report = build_report(sweep_dir, out)
    print(f"pneumolab-report: wrote {out / REPORT_MD}")
    for problem in report.problems:
        print(f"pneumolab-report: {problem}", file=sys.stderr)
    return 1 if report.problems or returncode else 0


if __name__ == "__main__":
    sys.exit(main())
