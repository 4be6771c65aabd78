"""`pneumolab-eval RUN_DIR [data overrides...] [--out DIR]`: a finished run's seeds on another test split.

The data overrides are those `pneumolab` takes (data=pneumoniamnist data.path=x.npz);
without any, the run's own data (a folder run from before data.resize: squeeze). The
test split's images are brought to the run's image size (folder images are decoded at
it, made square by the data config's data.resize, with a warning when the run was
trained with the other mode; npz images of another size are resized, and eval.json
says so). `DIR/eval.json` (default RUN_DIR/eval/<data name>/) holds per_seed, summary
and ensemble in results.json's schema, plus what was evaluated.
Given a sweep directory, every point is evaluated and `eval.csv` lists them all.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pneumolab.outputs.checkpoint import SavedSeeds, load_seeds
from pneumolab.config import DataConfig
from pneumolab.errors import PneumolabError
from pneumolab.files import atomic_open, atomic_write_text
from pneumolab.record.metric_table import mean_std_percent
from pneumolab.cli.predict import fail, resize_u8, tool_arguments
from pneumolab.record.results import RESULTS, build_ensemble, build_summary, seed_entry
from pneumolab.record.seed_run import SeedRun

log = logging.getLogger("pneumolab")


def data_config(run_dir: Path, overrides: Sequence[str]) -> DataConfig:
    """The data group composed from `overrides` as `pneumolab` would, or the run's own without any."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pneumolab.config import config_dir
    from pneumolab.config import register_configs, to_settings
    from pneumolab.cli.overrides import check_command_line

    register_configs()
    # As `pneumolab` reads them: ~ in paths expanded, misspelt keys named.
    overrides = check_command_line(list(overrides), config_dir())
    own = None if overrides else run_data(run_dir)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides) or [f"data={own['name']}"])
    if own is not None:
        cfg.data = OmegaConf.merge(cfg.data, own)
    return to_settings(cfg).data


def run_data(run_dir: Path) -> dict:
    data = json.loads((run_dir / RESULTS).read_text(encoding="utf-8"))["config"]["data"]
    if data.get("name") == "folder":
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


def evaluate_point(run_dir: Path, cfg: DataConfig, out_dir: Path | None) -> tuple[Path, dict[str, Any]]:
    saved = load_seeds(run_dir)
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


def sweep_points(directory: Path) -> list[Path]:
    """The directory itself when it is a run, else every run below it (a sweep), in job order."""
    if (directory / RESULTS).is_file():
        return [directory]
    points = sorted((p.parent for p in directory.rglob(RESULTS) if "eval" not in p.parent.parts),
                    key=lambda p: [int(part) if part.isdigit() else part for part in p.parts])
    if not points:
        raise PneumolabError(f"{directory} holds no finished run (no results.json in it or below it). Give a run "
                             "directory, a sweep point or a sweep directory.")
    return points


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_open(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def evaluate_sweep(sweep_dir: Path, points: list[Path], cfg: DataConfig, out_dir: Path | None) -> None:
    """Every point's eval.json, and eval.csv: one row per point."""
    rows = []
    for point in points:
        _, report = evaluate_point(point, cfg, None)
        rows.append({"point": str(point.relative_to(sweep_dir)), "data": report["data"],
                     **{f"{k}_{stat}": report["summary"][k][stat] for k in ("test_acc", "test_auc")
                        for stat in ("mean", "std", "ci95_low", "ci95_high")},
                     "ensemble_test_acc": report["ensemble"]["test_acc"]})
    table = (out_dir or sweep_dir / "eval" / cfg.name) / "eval.csv"
    write_table(table, rows)
    log.info("%d points -> %s", len(rows), table)


def main(argv: Sequence[str] | None = None) -> None:
    prog = "pneumolab-eval"
    args = tool_arguments(prog, __doc__, argv, {
        "run_dir": {"type": Path, "help": "a finished run, a sweep point, or a sweep directory"},
        "overrides": {"nargs": "*", "help": "data overrides as pneumolab takes them, e.g. data=pneumoniamnist"},
        "--out": {"type": Path, "help": "where eval.json (or a sweep's eval.csv) goes"},
    })
    try:
        run_dir = args.run_dir.expanduser()
        points = sweep_points(run_dir)
        cfg = data_config(points[0], args.overrides)
        if len(points) == 1:
            evaluate_point(points[0], cfg, args.out)
        else:
            evaluate_sweep(run_dir, points, cfg, args.out)
    except PneumolabError as exc:
        fail(prog, str(exc))


if __name__ == "__main__":
    main()
