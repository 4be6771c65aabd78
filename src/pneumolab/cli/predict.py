"""`pneumolab-predict RUN_DIR PATH... [--out FILE]`: a finished run's seeds applied to new images.

PATH is an image file, a folder (searched recursively, every file an image, as the
folder loader reads them) or a MedMNIST npz (every image of its splits, named
`<file>:<split>:<index>`). Preprocessing is the training one: grayscale, made square
by the run's `resize` (center_crop or squeeze; squeeze for runs older than that key)
and resized to the run's size, normalised with the run's training pixels. MedMNIST npz
images are square already: only their size changes, and only when it differs from the
run's. The CSV (stdout unless --out) has `path,prob,std,label,seed_<k>...`: the mean
over seeds of P(pneumonia), its spread over seeds, the ensemble's label and each
seed's probability.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from pneumolab.outputs.checkpoint import SavedSeeds, load_seeds
from pneumolab.data.dataset import CLASSES
from pneumolab.errors import PneumolabError
from pneumolab.cli.exits import side_command
from pneumolab.files import atomic_write_text
from pneumolab.data.folder import decode_images, to_square, walk_files

log = logging.getLogger("pneumolab")


def resize_u8(images: np.ndarray, size: int, resize: str) -> np.ndarray:
    """uint8 (N, H, W) -> (N, size, size), as the folder loader resizes."""
    return np.stack([np.asarray(to_square(Image.fromarray(img), size, resize)) for img in images])


def npz_images(path: Path, size: int, resize: str) -> tuple[list[str], np.ndarray]:
    from pneumolab.data.medmnist import read_npz

    names, blocks = [], []
    for split, data in read_npz(path).items():
        images = data.images[:, 0].numpy()
        if images.shape[1:] != (size, size):
            log.warning("%s: %s images are %dx%d px; resized to the run's %d px", path, split, *images.shape[1:], size)
            images = resize_u8(images, size, resize)
        names += [f"{path}:{split}:{i}" for i in range(len(images))]
        blocks.append(images)
    return names, np.concatenate(blocks)


def gather_images(inputs: Sequence[str], size: int, resize: str) -> tuple[list[str], torch.Tensor]:
    """Names and uint8 (N, 1, size, size) images of every PATH, in the order given."""
    names, blocks = [], []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            files = walk_files(path, hidden=[])
            if not files:
                raise PneumolabError(f"The folder {text} holds no files. Give a folder of images, image files or an npz.")
            names += [str(Path(text) / f.relative_to(path)) for f in files]
            blocks.append(decode_images(files, size, resize))
        elif path.suffix == ".npz" and path.is_file():
            npz_names, images = npz_images(path, size, resize)
            names += npz_names
            blocks.append(images)
        elif path.is_file():
            names.append(text)
            blocks.append(decode_images([path], size, resize))
        else:
            raise PneumolabError(f"{text} does not exist. Give image files, folders of images or an npz.")
    return names, torch.from_numpy(np.concatenate(blocks))[:, None]


def terminal_progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\rpredicting {done}/{total} images", end="\n" if done == total else "", file=sys.stderr, flush=True)


def prediction_table(saved: SavedSeeds, names: list[str], log_odds: np.ndarray) -> str:
    probs = 1.0 / (1.0 + np.exp(-log_odds))  # float64: no saturation before |log-odds| ~ 36
    mean = probs.mean(0)
    spread = probs.std(0, ddof=1) if probs.shape[0] > 1 else None  # one seed: no spread (an empty cell), never 0
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "prob", "std", "label", *(f"seed_{seed}" for seed in saved.models)])
    for i, name in enumerate(names):
        writer.writerow([name, f"{mean[i]:.9g}", "" if spread is None else f"{spread[i]:.9g}", CLASSES[int(mean[i] > 0.5)],
                         *(f"{p:.9g}" for p in probs[:, i])])
    return out.getvalue()


def predict(run_dir: Path, inputs: Sequence[str]) -> str:
    saved = load_seeds(run_dir)
    names, images = gather_images(inputs, saved.image_size, saved.resize)
    return prediction_table(saved, names, saved.log_odds(images, terminal_progress))


def tool_arguments(prog: str, doc: str, argv: Sequence[str] | None, add: dict[str, dict]) -> argparse.Namespace:
    """Parse a saved-seeds tool's command line (RUN_DIR first) and set it up: log lines on stderr, one thread."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, options in add.items():
        parser.add_argument(name, **options)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(1)  # fastest for these small models, as in training
    return args


@side_command("pneumolab-predict")
def main(argv: Sequence[str] | None = None) -> None:
    prog = "pneumolab-predict"
    args = tool_arguments(prog, __doc__, argv, {
        "run_dir": {"type": Path, "help": "a finished job directory (a single run or one sweep point)"},
        "paths": {"nargs": "+", "help": "image files, folders of images, or npz files"},
        "--out": {"type": Path, "help": "write the CSV here instead of to stdout"},
    })
    table = predict(args.run_dir.expanduser(), args.paths)
    if args.out:
        out = args.out.expanduser().absolute()
        atomic_write_text(out, table)
        count = sum(1 for _ in csv.reader(io.StringIO(table))) - 1  # the rows below the header
        print(f"{prog}: wrote the predictions for {count} image{'' if count == 1 else 's'} to {out}")
    else:
        sys.stdout.write(table)


if __name__ == "__main__":
    main()
