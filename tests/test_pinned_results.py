"""Same command, same numbers: two small jobs' results are pinned to the last bit.

Each job in JOBS is run with the installed `pneumolab` command and the numbers of its job folder
(see `pinned_numbers`) must equal tests/data/pinned_results_<name>.json exactly: every float of
results.json as json wrote it (repr floats, so equal values are equal bits), every line of
metrics.csv as text, and a SHA-256 of every tensor in model.safetensors. What legitimately changes
between versions is left out: the `config` dump and `overrides`, the versions, wall time, device,
paths and dates, `inference.model` (how the model is named: `_target_` since the package
reorganisation) and the prose `inference.decision_rule`.

The jobs run on the embedded phantom data (no files), on the CPU (`trainer.device=cpu`, so a GPU
machine takes the same path):

- `mlp_ce`: the report's MLP, seeds stacked into one model, CE head, a StepLR step mid-run.
- `cnn_aug_balanced`: the plain CNN with `augment=basic`, the balanced loss, the best-val checkpoint,
  and four seeds split over two forked processes (`trainer.processes=2`).

How the stored files were made: from the code before the package reorganisation (commit 8330ee3,
flat modules, entry module `pneumolab.cli`), with this file's own `pinned_numbers`:

    git worktree add /tmp/old-pneumolab 8330ee3
    PYTHONPATH=/tmp/old-pneumolab/src .venv/bin/python tests/test_pinned_results.py \\
        --module pneumolab.cli --pythonpath /tmp/old-pneumolab/src
    git worktree remove --force /tmp/old-pneumolab

(python 3.11.7, torch 2.14.1+cu130, numpy 2.4.6, x86-64 Linux; recorded in each file's `made_with`).
CPU float results can change with the torch build or the processor's instruction set; a failure on
another machine with other versions than `made_with` is a hint of that, not proof of a regression.

To change the numbers deliberately (a change meant to alter training, metrics or their rounding),
regenerate the files from the current code and commit them with that change, saying why:

    .venv/bin/python tests/test_pinned_results.py            # every job
    .venv/bin/python tests/test_pinned_results.py mlp_ce     # one job
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"

# The phantom split sizes are small so that each job takes seconds; the image size is the default 28.
JOBS: dict[str, list[str]] = {
    "mlp_ce": [
        "head=ce", "trainer.epochs=5", "trainer.seeds=[0,1]", "data.n_train=300", "data.n_val=60",
        "data.n_test=80", "data.batch_size=16", "optimizer.lr=0.002", "scheduler.step_size=3", "trainer.device=cpu",
    ],
    "cnn_aug_balanced": [
        "model=cnn", "augment=basic", "head.class_weights=balanced", "trainer.eval_checkpoint=best_val",
        "trainer.epochs=3", "trainer.seeds=[0,1,2,3]", "trainer.processes=2", "data.n_train=200",
        "data.n_val=60", "data.n_test=80", "data.image_size=16", "trainer.device=cpu",
    ],
}

# results.json keys whose values must not change with the code's layout.
RESULT_KEYS = ("seeds", "per_seed", "summary", "ensemble", "n_diverged", "data", "data_summary")
# Of results.json's `inference`: the numbers that applying the weights needs.
INFERENCE_KEYS = ("input_shape", "pixel_mean", "pixel_std", "seeds", "left_out")


def pinned_file(name: str) -> Path:
    return DATA / f"pinned_results_{name}.json"


def pinned_numbers(job_dir: Path) -> dict:
    """The numbers of a finished job folder that the same command must reproduce bit for bit."""
    from safetensors import safe_open

    results = json.loads((job_dir / "results.json").read_text())
    numbers = {key: results[key] for key in RESULT_KEYS}
    numbers["inference"] = {key: results["inference"][key] for key in INFERENCE_KEYS}
    with open(job_dir / "metrics.csv", newline="") as handle:
        numbers["metrics_csv"] = list(csv.reader(handle))  # text as written: float32 values, exactly
    weights = {}
    with safe_open(str(job_dir / "model.safetensors"), "pt") as handle:
        for key in sorted(handle.keys()):
            tensor = handle.get_tensor(key).contiguous()
            weights[key] = {"dtype": str(tensor.dtype), "shape": list(tensor.shape),
                            "sha256": hashlib.sha256(tensor.numpy().tobytes()).hexdigest()}
    numbers["weights"] = weights
    return numbers


def differences(expected, actual, path: str = "") -> list[str]:
    """Every place where `actual` is not `expected` to the last bit (types included: 1 is not 1.0)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = [f"{path}.{key}: missing" for key in expected if key not in actual]
        found += [f"{path}.{key}: unexpected" for key in actual if key not in expected]
        for key in expected:
            if key in actual:
                found += differences(expected[key], actual[key], f"{path}.{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: {len(actual)} items, expected {len(expected)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{path}[{i}]")]
    same = type(expected) is type(actual) and (
        expected == actual
        or (isinstance(expected, float) and math.isnan(expected) and math.isnan(actual)))
    return [] if same else [f"{path}: {actual!r}, expected {expected!r}"]


def run_pneumolab(command: list[str], overrides: list[str], job_dir: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([*command, *overrides, f"hydra.run.dir={job_dir}"], cwd=job_dir.parent, env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("name", JOBS)
def test_same_command_gives_the_pinned_numbers(name, tmp_path):
    from conftest import pneumolab_command, subprocess_env

    stored = json.loads(pinned_file(name).read_text())
    assert stored["overrides"] == JOBS[name], f"{pinned_file(name)} was made for other overrides: regenerate it"
    run_pneumolab(pneumolab_command(), JOBS[name], tmp_path / name, subprocess_env())
    found = differences(stored["numbers"], pinned_numbers(tmp_path / name), name)
    assert not found, (
        f"`pneumolab {' '.join(JOBS[name])}` no longer gives the pinned numbers "
        f"({len(found)} differences; stored with {stored['made_with']}):\n" + "\n".join(found[:40]))


def made_with() -> dict:
    import numpy
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "machine": platform.machine(), "system": platform.system()}


def regenerate(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rewrite tests/data/pinned_results_<job>.json from a fresh run.")
    parser.add_argument("jobs", nargs="*", help=f"jobs to regenerate, of {', '.join(JOBS)} (default: all)")
    parser.add_argument("--module", help="run `python -m MODULE` instead of the installed `pneumolab` "
                                         "(pneumolab.cli for the code before the reorganisation)")
    parser.add_argument("--pythonpath", help="PYTHONPATH for that run, e.g. an older checkout's src/")
    args = parser.parse_args(argv)
    unknown = [name for name in args.jobs if name not in JOBS]
    if unknown:
        parser.error(f"no job named {', '.join(unknown)}; the jobs: {', '.join(JOBS)}")
    command = [sys.executable, "-m", args.module] if args.module else [str(Path(sys.executable).parent / "pneumolab")]
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    DATA.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        env.setdefault("PNEUMOLAB_DATA", str(Path(scratch) / "cache"))
        for name in args.jobs or JOBS:
            job_dir = Path(scratch) / name
            run_pneumolab(command, JOBS[name], job_dir, env)
            record = {"overrides": JOBS[name], "made_with": made_with(), "numbers": pinned_numbers(job_dir)}
            pinned_file(name).write_text(json.dumps(record, indent=1) + "\n")
            print(f"wrote {pinned_file(name)}")


if __name__ == "__main__":
    regenerate()
