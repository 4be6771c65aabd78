"""`pneumolab`: the Hydra app. One job trains one configuration for every seed.

config -> dataset tensors -> fit -> results.json, metrics.csv, curves.png, roc.png, calibration.png
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pneumolab.config import Config, config_dir, layer_sizes, model_name, register_configs, to_settings
from pneumolab.errors import PneumolabError
from pneumolab.record.metric_table import mean_std_percent
from pneumolab.cli.exits import current_sweep_dir, handled, hydra_raises
from pneumolab.cli.rundir import undo_start  # also registers ${pneumolab_unique:} before Hydra resolves a directory
from pneumolab.outputs.tracking import check_tracker_installed, check_tracker_reachable, track_job
from pneumolab.record.names import CALIBRATION_PNG, CURVES_PNG, ROC_PNG

log = logging.getLogger("pneumolab")


def run_job(cfg: DictConfig, job_dir: Path, overrides: list[str], cores: int = 1) -> float | None:
    """Train on up to `cores` CPU cores, write every output, and return mean validation accuracy
    (the search objective).

    None when no seed has one (every seed diverged in an earlier run of this point).
    """
    # Before the heavy imports, so that a config mistake is reported in a second, not in five.
    settings = to_settings(cfg)
    check_tracker_installed(settings.logger)
    check_tracker_reachable(settings.logger)
    from pneumolab.data.cache import mention_large_cache
    from pneumolab.record.results import RESULTS
    from pneumolab.cli.resume import reusable_results

    mention_large_cache(settings.data.resolved_cache_dir())
    config = OmegaConf.to_container(cfg, resolve=True)
    done = reusable_results(job_dir / RESULTS, config)
    if done is not None:
        log.info("skipped: done (%s already holds this config)", job_dir / RESULTS)
        check_some_seed_converged(done, job_dir / RESULTS)
        return done["summary"]["val_acc"]["mean"]

    dataset, runs, wall, device = train_job(settings, job_dir, cores)
    results = write_job_outputs(job_dir, config, overrides, settings, dataset, runs, wall, device)
    track_job(settings.logger, job_dir, runs, results)
    log.info("test acc %s over %d seeds (%d diverged) in %.1f s -> %s", mean_std_percent(results["summary"]["test_acc"]),
             results["summary"]["test_acc"]["n"], results["n_diverged"], wall, job_dir)
    check_some_seed_converged(results, job_dir / RESULTS)
    return results["summary"]["val_acc"]["mean"]


def train_job(settings: Config, job_dir: Path, cores: int):
    """Load the data and train every seed: (dataset, runs, wall seconds, device)."""
    from pneumolab.data.load import load_data
    from pneumolab.cli.guards import check_job_resources
    from pneumolab.engine.progress import EpochReport
    from pneumolab.engine.train import configure_torch, fit, resolve_device, seed_processes

    log.info("settings: %s", describe_settings(settings))
    configure_torch(settings)
    device = resolve_device(settings.trainer.device)
    processes = seed_processes(settings, device, cores)
    start = time.perf_counter()
    check_job_resources(settings, job_dir, device)  # disk room and memory, before anything is allocated
    dataset = load_data(settings.data)
    log.info("data: %s | train %d, val %s, test %d | device %s, %d process%s",
             dataset.source, len(dataset.train), "per seed" if dataset.val_per_seed else len(dataset.val),
             len(dataset.test), device, processes, "es" if processes > 1 else "")
    progress = EpochReport(settings.trainer.seeds, job_tag())
    runs = fit(settings, dataset, device, on_epoch=progress, processes=processes)
    progress.finish(runs)
    return dataset, runs, time.perf_counter() - start, device


def write_job_outputs(job_dir: Path, config: dict, overrides: list[str], settings: Config, dataset, runs, wall: float,
                      device) -> dict:
    """model.safetensors, metrics.csv, curves.png, roc.png, calibration.png, then results.json (last: done)."""
    from pneumolab.outputs.checkpoint import save_weights
    from pneumolab.record.metrics import roc_curve
    from pneumolab.outputs.plots import evaluated_checkpoints, loss_name, plot_calibration, plot_curves, plot_roc, setting_title
    from pneumolab.record.results import build_results, inference_record, write_metrics_csv, write_results

    test_labels = dataset.test.labels.numpy()
    # Phantom and PneumoniaMNIST images are square already; PneumoniaMNIST's were centre-cropped when
    # made, so predict crops non-square images the same way for runs trained on them.
    resize = getattr(settings.data, "resize", "center_crop")
    inference = inference_record(config["model"], settings.head.name, dataset.image_shape, resize,
                                 dataset.pixel_stats(), runs)
    results = build_results(config, overrides, runs, test_labels, {"source": dataset.source, "summary": dataset.summary()},
                            inference, wall, str(device))
    save_weights(job_dir, runs)
    write_metrics_csv(job_dir, runs)
    plot_curves([{"seed": r.seed, **r.history} for r in runs], job_dir / CURVES_PNG,
                title=setting_title(config), loss=loss_name(config),
                evaluated=evaluated_checkpoints(results["per_seed"], settings.trainer.eval_checkpoint))
    rocs = []
    for run, entry in zip(runs, results["per_seed"]):
        if not run.diverged:
            fpr, tpr = roc_curve(test_labels, run.test_scores)
            rocs.append({"seed": run.seed, "fpr": fpr, "tpr": tpr, "auc": entry["test_auc"]})
    plot_roc(rocs, job_dir / ROC_PNG, title=setting_title(config), ensemble=ensemble_roc(runs, results, test_labels))
    plot_calibration(*reliability_curves(runs, results, test_labels), job_dir / CALIBRATION_PNG,
                     title=setting_title(config))
    write_results(job_dir, results)
    return results


def ensemble_roc(runs, results: dict, test_labels) -> dict | None:
    """What roc.png draws in bold: the ROC curve of the mean probability over the seeds that did not
    diverge, with the AUC results.json gives the ensemble; None when there is none."""
    from pneumolab.record.metrics import ensemble_log_odds, roc_curve
    from pneumolab.record.results import converged_outputs

    ensemble = results["ensemble"]
    if ensemble is None or ensemble.get("test_auc") is None:
        return None
    scores, _ = converged_outputs(runs)
    fpr, tpr = roc_curve(test_labels, ensemble_log_odds(scores))
    return {"fpr": fpr, "tpr": tpr, "auc": ensemble["test_auc"], "n_seeds": ensemble["n_seeds"]}


def reliability_curves(runs, results: dict, test_labels) -> tuple[list[dict], dict | None]:
    """What calibration.png draws: the reliability curve of each seed that did not diverge and of their
    ensemble (the mean probability), with the ECE results.json gives each."""
    from pneumolab.record.metrics import ensemble_log_odds, reliability_curve
    from pneumolab.record.results import converged_outputs

    seeds = [{"seed": run.seed, "ece": entry["test_ece"], **reliability_curve(test_labels, run.test_scores)}
             for run, entry in zip(runs, results["per_seed"]) if not run.diverged]
    ensemble = results["ensemble"]
    if ensemble is None:
        return seeds, None
    scores, _ = converged_outputs(runs)
    return seeds, {"n_seeds": ensemble["n_seeds"], "ece": ensemble["test_ece"],
                   **reliability_curve(test_labels, ensemble_log_odds(scores))}


def describe_settings(settings: Config) -> str:
    """The job's settings in one line, printed once at its start.

    model=mlp [128, 128, 128] | head=bce | optimizer=adam lr=0.001 | scheduler=step | batch 32 | 30 epochs |
    seeds 0..4 | data=phantom; a custom model shows its class and keys (model=custom mynets.TinyNet(width=32)),
    and the options that change training when set: model.weights, head.class_weights=balanced,
    augment=basic with its keys, data.resize of folder data.
    """
    model = settings.model
    if model.name == "custom":
        shape = f"{model.target}({', '.join(f'{key}={setting_text(value)}' for key, value in model.options.items())})"
    else:
        shape = layer_sizes(model.options) or ""
    if model.weights:
        shape = f"{shape} weights={model.weights}"
    head = settings.head
    weights = getattr(head, "class_weights", "none")
    trainer = settings.trainer
    seeds = trainer.seeds
    seed_text = f"{seeds[0]}..{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ",".join(map(str, seeds))
    parts = [f"model={model.name} {shape}".rstrip(),
             f"head={head.name}" + (f" class_weights={weights}" if weights != "none" else "")]
    augment = getattr(settings, "augment", None)
    if augment is not None and augment.name != "none":
        keys = [f"{key}={setting_text(value)}" for key, value in vars(augment).items() if key != "name"]
        parts.append(" ".join([f"augment={augment.name}", *keys]))
    data = f"data={settings.data.name}"
    if getattr(settings.data, "resize", None):
        data += f" resize={settings.data.resize}"
    parts += [f"optimizer={settings.optimizer.name} lr={settings.optimizer.lr:g}",
              f"scheduler={settings.scheduler.name}", f"batch {settings.data.batch_size}", f"{trainer.epochs} epochs",
              f"seeds {seed_text}", data]
    return " | ".join(parts)


def setting_text(value) -> str:
    """A value as it is typed on the command line: 0.05, true, [16, 32], mynets.TinyNet."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def job_tag() -> str:
    """"job N" for a sweep's job N, so that parallel jobs' lines can be told apart; "" for a single run."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"job {HydraConfig.get().job.num}"
    return ""


# Launchers that run one job at a time on the machine, or each job on its own allocation.
WHOLE_MACHINE_LAUNCHERS = ("BasicLauncher", "SlurmLauncher")


def job_cores(hydra_cfg: DictConfig) -> int:
    """CPU cores this job may use: all it may run on, unless the launcher runs several jobs
    side by side on this machine (joblib, submitit_local), which gives each job one core."""
    from pneumolab.cores import usable_cores

    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if hydra_cfg.mode == RunMode.MULTIRUN and not launcher.endswith(WHOLE_MACHINE_LAUNCHERS):
        return 1
    return usable_cores()


def check_some_seed_converged(results: dict, path: Path) -> None:
    """A job whose every seed diverged has no numbers to report: an error, though its results.json stays."""
    if results["n_diverged"] == len(results["per_seed"]):
        raise PneumolabError(
            f"Every seed diverged (the loss became NaN or infinite); see {path}. {divergence_advice(results['config'])}"
        )


def divergence_advice(config: dict) -> str:
    """What to change when every seed diverged: the learning rate, and for SGD, Adam (whose steps follow the
    gradients' scale) too; never the optimizer the run already uses."""
    optimizer = config["optimizer"]
    advice = f"Lower optimizer.lr (it is {optimizer['lr']:g}; try {optimizer['lr'] / 10:g})"
    if optimizer["name"] == "sgd":
        advice += " or switch to optimizer=adam"
    if model_name(config["model"].get("_target_")) == "custom":
        advice += (". If it still diverges, check the custom model's forward for operations that can overflow "
                   "(exp, log of 0, division by 0)")
    return advice + "."


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
            # Refused before training: the run folder goes (or, one the user named, is left as it was).
            # A run that wrote results (every seed diverged) keeps them.
            undo_start()
            print(f"pneumolab: error: {exc}", file=sys.stderr)
            sys.exit(2)

    # In a sweep, one failing point must not stop the others: record it for the summary.
    from pneumolab.record.results import write_failure

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


def main() -> None:
    from pneumolab.version import __version__
    from pneumolab.cli.overrides import check_command_line, groups_help

    if "--version" in sys.argv[1:]:
        print(f"pneumolab {__version__}")
        return
    register_configs()
    OmegaConf.register_new_resolver("pneumolab_groups", groups_help, replace=True)  # --help's group list
    try:
        sys.argv[1:] = check_command_line(sys.argv[1:], config_dir())
    except PneumolabError as exc:
        print(f"pneumolab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    with handled(), hydra_raises():  # input problems exit 2, Ctrl-C / SIGTERM 130 / 143, one line each
        hydra_entry()
        sweep_dir = current_sweep_dir()
    if sweep_dir is not None:
        from pneumolab.analysis.points import find_points

        # As the sweep's summary tells it, from the job files: a failed point (error.json), or none at all.
        points = find_points([sweep_dir])
        if not points or not all(point.ok for point in points):
            sys.exit(1)


if __name__ == "__main__":
    main()
