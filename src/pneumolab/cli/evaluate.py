"""`pneumolab-eval RUN_DIR [data overrides...] [--out DIR]`: a finished run's seeds on another test split.

The data overrides are those `pneumolab` takes (data=pneumoniamnist data.path=x.npz);
without any, the run's own data (a folder run from before data.resize: squeeze). The
test split's images are brought to the run's image size (folder images are decoded at
it, made square by the data config's data.resize, with a warning when the run was
trained with the other mode; npz images of another size are resized, and eval.json
says so). `DIR/eval.json` (default RUN_DIR/eval/<data name>/) holds per_seed, summary
and ensemble in results.json's schema, plus what was evaluated.
Given a sweep directory, every point is evaluated (each on its own data without overrides)
and `eval.csv` lists them all, as summary.csv does: a point that failed, or that cannot be
evaluated (every seed diverged), is a row with status failed and the reason, and the
command then exits 1.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from pneumolab.outputs.checkpoint import SavedSeeds, load_seeds
from pneumolab.config import DataConfig, config_dir, register_configs, to_settings
from pneumolab.errors import PneumolabError
from pneumolab.cli.exits import side_command
from pneumolab.files import atomic_open, atomic_write_text, written_together
from pneumolab.record.metric_table import mean_std_percent
from pneumolab.cli.overrides import check_command_line
from pneumolab.analysis.points import Point, find_points
from pneumolab.cli.predict import resize_u8, tool_arguments
from pneumolab.record.results import FAILURE, RESULTS, build_ensemble, build_summary, read_json, seed_entry
from pneumolab.analysis.summary_md import label_point
from pneumolab.record.seed_run import SeedRun

log = logging.getLogger("pneumolab")

# An override that chooses the data config (data=folder), rather than changing a key of the default one.
DATA_CHOICE = re.compile(r"\+*data=")
# What eval.csv gives of each evaluated point.
TABLE_METRICS = ("test_acc", "test_auc")
TABLE_STATS = ("mean", "std", "ci95_low", "ci95_high")


def data_config(overrides: Sequence[str]) -> DataConfig:
    """The data group composed from `overrides` as `pneumolab` would: from pneumolab's default data config,
    unless they choose another with data=NAME."""
    register_configs()
    try:
        # As `pneumolab` reads them: ~ in paths expanded, misspelt keys named.
        overrides = check_command_line(list(overrides), config_dir())
        cfg = compose_config(overrides)
    except PneumolabError as exc:
        raise PneumolabError(f"{exc} {default_data_note(overrides)}".rstrip()) from None
    if note := default_data_note(overrides):
        log.warning("%s", note)
    return to_settings(cfg).data


def own_data_config(run_dir: Path) -> DataConfig:
    """The data config the run was trained on, from its results.json."""
    own = run_data(run_dir)
    register_configs()
    cfg = compose_config([f"data={own['name']}"])
    cfg.data = OmegaConf.merge(cfg.data, own)
    return to_settings(cfg).data


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """pneumolab's config composed from `overrides` (the schemas registered)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def default_data_note(overrides: Sequence[str]) -> str:
    """What data overrides without data=NAME start from; empty when they choose the data."""
    if any(DATA_CHOICE.match(override) for override in overrides):
        return ""
    default = compose_config([]).data.name
    return (f"Data overrides start from pneumolab's default data config (data={default}), not from the run's own: "
            "begin them with data=NAME to evaluate on other data (data=folder data.root=DIR, "
            "data=pneumoniamnist data.path=FILE), or give none to evaluate on the run's own test split.")


def run_data(run_dir: Path) -> dict:
    """results.json's config.data, or one paragraph saying that it has none."""
    results, unreadable = read_json(run_dir / RESULTS)
    config = results.get("config") if isinstance(results, dict) else None
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        problem = unreadable or ("is missing" if results is None else "records no data config (config.data)")
        raise PneumolabError(
            f"{run_dir / RESULTS} {problem}, so the run's own test data is unknown. Name the data to evaluate on "
            f"(e.g. pneumolab-eval {run_dir} data=folder data.root=DIR), or re-run the job to write its results.json again."
        )
    data = dict(data)
    if data["name"] == "folder":
        data.setdefault("resize", "squeeze")  # runs from before data.resize existed squeezed their images
    return data


def test_images(cfg: DataConfig, size: int) -> tuple[torch.Tensor, np.ndarray, str, str | None]:
    """The test split at the run's size: images, labels, the data's description and a resize note."""
    from pneumolab.data.load import load_data

    if hasattr(cfg, "image_size"):
        cfg.image_size = size  # folder and phantom images are made at the run's size directly
    dataset = load_data(cfg)
    images, note = dataset.test.images, None
    if images.shape[-2:] != (size, size):
        note = f"test images resized from {images.shape[-2]}x{images.shape[-1]} to {size}x{size} px"
        log.warning("%s", note)
        # Only npz images get here, and they are square: nothing to crop.
        images = torch.from_numpy(resize_u8(images[:, 0].numpy(), size, "squeeze"))[:, None]
    return images, dataset.test.labels.numpy(), dataset.source, note


def evaluate_saved(saved: SavedSeeds, images: torch.Tensor, labels: np.ndarray) -> dict[str, Any]:
    log_odds = saved.log_odds(images)
    runs = [SeedRun(seed, test_scores=scores, test_predictions=(scores > 0).astype(np.int64))
            for seed, scores in zip(saved.models, log_odds)]
    per_seed = [seed_entry(run, labels) for run in runs]
    return {"per_seed": per_seed, "summary": build_summary(per_seed, runs, labels),
            "ensemble": build_ensemble(runs, labels)}


def evaluate_point(run_dir: Path, cfg: DataConfig | None, out_dir: Path | None) -> tuple[Path, dict[str, Any]]:
    """The run's eval.json on the test split of `cfg`, or of the run's own data when None."""
    saved = load_seeds(run_dir)
    cfg = cfg or own_data_config(run_dir)
    if getattr(cfg, "resize", saved.resize) != saved.resize:
        log.warning("%s was trained on images made square by %s; these are made square by data.resize=%s "
                    "(add data.resize=%s to match).", run_dir, saved.resize, cfg.resize, saved.resize)
    images, labels, source, note = test_images(cfg, saved.image_size)
    report = {"run_dir": str(run_dir), "data": source, "data_config": vars(cfg).copy(), "n_test": int(len(labels)),
              "test_class_counts": {"NORMAL": int((labels == 0).sum()), "PNEUMONIA": int(labels.sum())},
              "resized": note, **evaluate_saved(saved, images, labels)}
    out = (out_dir or run_dir / "eval" / cfg.name) / "eval.json"
    atomic_write_text(out, json.dumps(report, indent=2, allow_nan=False) + "\n")
    acc = report["summary"]["test_acc"]
    log.info("%s: test acc %s (ensemble %.1f %%) on %s -> %s", run_dir, mean_std_percent(acc),
             100 * report["ensemble"]["test_acc"], source, out)
    return out, report


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_open(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def point_row(point: Point, sweep_dir: Path, cfg: DataConfig | None) -> dict[str, Any]:
    """A point's row of eval.csv, evaluated (its eval.json written) unless it failed, as summary.csv lists it:
    a point that failed to train, or whose seeds cannot be applied (every one diverged), has status failed
    and the reason, and the others are evaluated all the same."""
    row: dict[str, Any] = {"point": label_point(point, sweep_dir), "overrides": " ".join(point.overrides),
                           "status": "failed", "error": point.error, "data": None,
                           **dict.fromkeys(f"{key}_{stat}" for key in TABLE_METRICS for stat in TABLE_STATS),
                           "ensemble_test_acc": None}
    if not point.ok:
        return row
    try:
        _, report = evaluate_point(point.job_dir, cfg, None)
    except PneumolabError as exc:
        return {**row, "error": str(exc)}
    summary = report["summary"]
    return {**row, "status": "ok", "data": report["data"],
            **{f"{key}_{stat}": summary[key][stat] for key in TABLE_METRICS for stat in TABLE_STATS},
            "ensemble_test_acc": report["ensemble"]["test_acc"]}


def own_data_names(points: list[Point]) -> str:
    """The name of the data the points were trained on, as a run's eval/<name>/ names it; several joined by +."""
    names = {point.config["data"].get("name") for point in points if isinstance(point.config.get("data"), dict)}
    return "+".join(sorted(str(name) for name in names)) or "own"


def evaluate_sweep(sweep_dir: Path, cfg: DataConfig | None, out_dir: Path | None) -> bool:
    """Every point's eval.json, and eval.csv with one row per point; True when every point was evaluated.

    Without `cfg` each point is evaluated on its own data. The files appear together once every point is
    done (files.written_together): a stopped evaluation leaves the previous one whole.
    """
    points = find_points([sweep_dir])
    if not points:
        raise PneumolabError(f"{sweep_dir} holds no finished run (no results.json or error.json in it or below it). "
                             "Give a run directory, a sweep point or a sweep directory.")
    with written_together():
        rows = [point_row(point, sweep_dir, cfg) for point in points]
        table = (out_dir or sweep_dir / "eval" / (cfg.name if cfg else own_data_names(points))) / "eval.csv"
        write_table(table, rows)
    failed = [row for row in rows if row["status"] != "ok"]
    for row in failed:
        log.error("failed point %s (%s): %s", row["point"], row["overrides"], row["error"])
    log.info("%d points (%d failed) -> %s", len(rows), len(failed), table)
    return not failed


@side_command("pneumolab-eval")
def main(argv: Sequence[str] | None = None) -> int:
    args = tool_arguments("pneumolab-eval", __doc__, argv, {
        "run_dir": {"type": Path, "help": "a finished run, a sweep point, or a sweep directory"},
        "overrides": {"nargs": "*", "help": "data overrides as pneumolab takes them, e.g. data=pneumoniamnist"},
        "--out": {"type": Path, "help": "where eval.json (or a sweep's eval.csv) goes"},
    })
    run_dir = args.run_dir.expanduser()
    cfg = data_config(args.overrides) if args.overrides else None
    if (run_dir / RESULTS).is_file() or (run_dir / FAILURE).is_file():  # a run or one sweep point
        evaluate_point(run_dir, cfg, args.out)
        return 0
    return 0 if evaluate_sweep(run_dir, cfg, args.out) else 1


if __name__ == "__main__":
    sys.exit(main())
