"""`pneumolab`: the Hydra app. One job trains one configuration for every seed.

config -> dataset tensors -> fit -> results.json, metrics.csv, curves.png, roc.png
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
import re
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pneumolab.config import Config, register_configs, to_settings
from pneumolab.errors import PneumolabError

log = logging.getLogger("pneumolab")


def config_dir() -> str:
    """conf/ inside the installed package (wheel), else the repository's top-level conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"pneumolab's conf/ directory is missing (looked in {here / 'conf'} and {here.parents[1] / 'conf'})")


def configure_torch(settings: Config) -> None:
    import torch

    # One thread is fastest for these small matrices (see scripts/bench.py); parallel
    # sweep jobs get one core each instead.
    torch.set_num_threads(settings.trainer.threads or 1)
    # Tiny gradients and Adam moments turn subnormal in the first epochs, and every CPU
    # operation on a subnormal float is many times slower: those epochs took 1.6x as long.
    torch.set_flush_denormal(True)
    if settings.trainer.deterministic:
        # Must be set before the first cuBLAS call; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Set both ways: sweep jobs can share one process, and one job's choice must not leak into the next.
    # Only on a change: the call imports torch._dynamo, seconds of start-up.
    if torch.are_deterministic_algorithms_enabled() != settings.trainer.deterministic:
        torch.use_deterministic_algorithms(settings.trainer.deterministic)


class EpochReport:
    """Seed / epoch / validation accuracy: one updating line on a terminal, log lines otherwise.

    It hears from the seeds training in this process: all of them, one at a time when
    they train one after another, or the first group when other processes train the rest.
    """

    def __init__(self, n_seeds: int) -> None:
        self.tty = sys.stderr.isatty()
        self.n_seeds = n_seeds

    def __call__(self, epoch: int, epochs: int, seeds: list[int], val_acc: list[float]) -> None:
        accs = " ".join("nan" if math.isnan(a) else f"{a:.3f}" for a in val_acc)
        seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}..{seeds[-1]}"
        if len(seeds) < self.n_seeds:
            seed_text += f" of {self.n_seeds}"
        line = f"{seed_text} | epoch {epoch}/{epochs} | val acc {accs}"
        if self.tty:
            end = "\n" if epoch == epochs else ""
            print(f"\r{line}", end=end, file=sys.stderr, flush=True)
        else:
            log.info(line)


def run_job(cfg: DictConfig, job_dir: Path, overrides: list[str], cores: int = 1) -> float | None:
    """Train on up to `cores` CPU cores, write every output, and return mean validation accuracy
    (the search objective).

    None when no seed has one (every seed diverged in an earlier run of this point).
    """
    # Before the heavy imports below, so that a config mistake is reported in a second, not in five.
    settings = to_settings(cfg)

    import numpy as np

    from pneumolab.data import load_data
    from pneumolab.plots import plot_curves, plot_roc
    from pneumolab.metrics import roc_curve
    from pneumolab.results import RESULTS, build_results, read_json, write_metrics_csv, write_results
    from pneumolab.train import fit, resolve_device, seed_processes

    config = OmegaConf.to_container(cfg, resolve=True)
    done = read_json(job_dir / RESULTS)
    if done is not None and done.get("config") == config:
        log.info("skipped: done (%s already holds this config)", job_dir / RESULTS)
        check_some_seed_converged(done, job_dir / RESULTS)
        return done["summary"]["val_acc"]["mean"]

    configure_torch(settings)
    device = resolve_device(settings.trainer.device)
    processes = seed_processes(settings, device, cores)
    start = time.perf_counter()
    dataset = load_data(settings.data)
    log.info("data: %s | train %d, val %d, test %d | device %s, %d process%s",
             dataset.source, len(dataset.train), len(dataset.val), len(dataset.test), device,
             processes, "es" if processes > 1 else "")
    runs = fit(settings, dataset, device, on_epoch=EpochReport(len(settings.trainer.seeds)), processes=processes)
    wall = time.perf_counter() - start

    test_labels = dataset.test.labels.numpy()
    results = build_results(config, overrides, runs, test_labels, dataset.source, wall, str(device))
    write_metrics_csv(job_dir, runs)
    plot_curves([{"seed": r.seed, **r.history} for r in runs], job_dir / "curves.png", title=" ".join(overrides) or None)
    rocs = []
    for run, entry in zip(runs, results["per_seed"]):
        if not run.diverged:
            fpr, tpr = roc_curve(test_labels, run.test_scores)
            rocs.append({"seed": run.seed, "fpr": fpr, "tpr": tpr, "auc": entry["test_auc"]})
    plot_roc(rocs, job_dir / "roc.png", title=" ".join(overrides) or None)
    write_results(job_dir, results)

    acc = results["summary"]["test_acc"]
    log.info("test acc %.4f +- %.4f over %d seeds (%d diverged) in %.1f s -> %s",
             acc["mean"] if acc["n"] else math.nan, acc["std"] if acc["n"] else math.nan,
             acc["n"], results["n_diverged"], wall, job_dir)
    check_some_seed_converged(results, job_dir / RESULTS)
    return float(np.mean([r.val_acc for r in runs if not r.diverged]))


# Launchers that run one job at a time on the machine, or each job on its own allocation.
WHOLE_MACHINE_LAUNCHERS = ("BasicLauncher", "SlurmLauncher")


def job_cores(hydra_cfg: DictConfig) -> int:
    """CPU cores this job may use: all it may run on, unless the launcher runs several jobs
    side by side on this machine (joblib, submitit_local), which gives each job one core."""
    from pneumolab.workers import usable_cores

    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if hydra_cfg.mode == RunMode.MULTIRUN and not launcher.endswith(WHOLE_MACHINE_LAUNCHERS):
        return 1
    return usable_cores()


def check_some_seed_converged(results: dict, path: Path) -> None:
    """A job whose every seed diverged has no numbers to report: an error, though its results.json stays."""
    if results["n_diverged"] == len(results["per_seed"]):
        raise PneumolabError(
            f"Every seed diverged (the loss became NaN or infinite); see {path}. "
            "Lower optimizer.lr or switch optimizer=adam."
        )


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def hydra_entry(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    cores = job_cores(hydra_cfg)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        try:
            return run_job(cfg, job_dir, overrides, cores)
        except PneumolabError as exc:
            print(f"pneumolab: error: {exc}", file=sys.stderr)
            sys.exit(2)

    # In a sweep, one failing point must not stop the others: record it for the summary.
    from pneumolab.results import write_failure

    try:
        return run_job(cfg, job_dir, overrides, cores)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, then the sweep goes on
        message = str(exc) if isinstance(exc, PneumolabError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, PneumolabError):
            log.error("%s", traceback.format_exc())
        log.error("failed: %s", message)
        write_failure(job_dir, OmegaConf.to_container(cfg, resolve=False), overrides, message)
        # None, not NaN: the Optuna sweeper records a None objective as a failed trial and
        # goes on, while a NaN crashes the whole search (facebookresearch/hydra#2237).
        return None


# `group=glob(sub/*)`: a glob over a sub-folder of a config group.
NESTED_GROUP_GLOB = re.compile(r"^(\+?)(\w+)=glob\(([^(),]*/[^(),]*)\)$")


def expand_nested_group_globs(args: list[str]) -> list[str]:
    """Spell out `experiment=glob(report/*)` as the list of matching options.

    Hydra's glob() sees only the top level of a config group (hydra#3055), so on its
    own `experiment=glob(report/*)` would sweep nothing.
    """
    expanded = []
    for arg in args:
        match = NESTED_GROUP_GLOB.match(arg)
        group_dir = Path(config_dir(), match.group(2)) if match else None
        if match and group_dir.is_dir():
            options = sorted(p.relative_to(group_dir).with_suffix("").as_posix() for p in group_dir.rglob("*.yaml"))
            chosen = [option for option in options if fnmatch.fnmatchcase(option, match.group(3))]
            if chosen:
                arg = f"{match.group(1)}{match.group(2)}={','.join(chosen)}"
        expanded.append(arg)
    return expanded


def main() -> None:
    register_configs()
    sys.argv[1:] = expand_nested_group_globs(sys.argv[1:])
    hydra_entry()
    from pneumolab.sweep import failed_jobs_in_last_sweep

    if failed_jobs_in_last_sweep():
        sys.exit(1)


if __name__ == "__main__":
    main()
