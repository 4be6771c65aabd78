"""`pneumolab-summarize DIR [DIR ...]`: a sweep's summary rebuilt from its job files, or several sweeps compared."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from pneumolab.analysis.summary import build_summary
from pneumolab.analysis.summary_md import label_point
from pneumolab.analysis.sweep import write_summary
from pneumolab.cli.exits import side_command
from pneumolab.errors import PneumolabError
from pneumolab.record.metric_table import SUMMARY_KEYS
from pneumolab.record.names import SUMMARY_MD


@side_command("pneumolab-summarize")
def main(argv: Sequence[str] | None = None) -> None:
    """`pneumolab-summarize DIR [DIR ...] [--out OUT] [--all-pairs] [--metric NAME]`: exit 1 when a point
    failed, 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="pneumolab-summarize",
        description="Rebuild summary.csv, summary.md and summary.png from the results.json (and error.json) "
                    "files under one sweep directory, or compare the runs found under several directories.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                        help="a sweep directory, or a run directory holding results.json; searched recursively")
    parser.add_argument("--out", type=Path, help="where to write the summary (default: the first DIR)")
    parser.add_argument("--all-pairs", action="store_true",
                        help="test every pair of points, not only those whose resolved configs differ in exactly "
                             "one setting")
    parser.add_argument("--metric", default="test_acc", choices=SUMMARY_KEYS, metavar="NAME",
                        help="the per-seed metric the t-tests and summary.png compare (default: test_acc); "
                             f"one of {', '.join(SUMMARY_KEYS)}")
    args = parser.parse_args(argv)

    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        raise PneumolabError(f"{', '.join(missing)}: no such directory. Give the sweep directory Hydra printed "
                             "(outputs/multirun/<date>/<time>) or a run directory (outputs/runs/<date>/<time>).")
    summary = build_summary(args.dirs, all_pairs=args.all_pairs, metric=args.metric)
    if not summary.points:
        raise PneumolabError(
            f"No results found: no results.json or error.json under {', '.join(map(str, args.dirs))}. "
            "A job writes results.json when it finishes; point this command at a sweep directory "
            "(outputs/multirun/<date>/<time>) or at run directories (outputs/runs/<date>/<time>) of finished jobs.")
    out_dir = args.out or args.dirs[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_summary(summary, out_dir)
    print((out_dir / SUMMARY_MD).read_text(encoding="utf-8"), end="")
    for point in summary.failed:
        print(f"pneumolab-summarize: failed point {label_point(point, out_dir)}: {point.error}", file=sys.stderr)
    if summary.failed:
        sys.exit(1)
