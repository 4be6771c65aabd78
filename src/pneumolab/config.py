"""Typed schemas for every config group.

The YAML files in `conf/` extend these schemas, so Hydra rejects an unknown key
or a wrongly typed value while composing. Value checks (batch size >= 1, ...)
live in `__post_init__`, which runs when `to_settings` turns the composed
config into these dataclasses, before any data is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pneumolab.errors import PneumolabError


def config_dir() -> str:
    """conf/ inside the installed package (wheel), else the repository's top-level conf/."""
    here = Path(__file__).resolve().parent  # src/pneumolab, or pneumolab/ in a wheel
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"pneumolab's conf/ directory is missing (looked in {here / 'conf'} and {here.parents[1] / 'conf'})")


def _require(ok: bool, key: str, value: Any, fix: str) -> None:
    if not ok:
        raise PneumolabError(f"Invalid config value {key}={value!r}: {fix}")


# torch.Generator and numpy take seeds as unsigned 64-bit integers.
SEED_RANGE = "from 0 to 2**64 - 1"


def _is_seed(value: int) -> bool:
    return 0 <= value < 2**64


# Label 0 and label 1: the class folders of folder data, and how predictions name the classes.
CLASSES = ("NORMAL", "PNEUMONIA")


# --- model -------------------------------------------------------------------

BUILT_IN_MODELS = "pneumolab.models."


def model_name(target: str) -> str:
    """What users type after model= for the class `target`: the module's name for a built-in model, else custom."""
    module = str(target).rpartition(".")[0]
    return module.removeprefix(BUILT_IN_MODELS) if module.startswith(BUILT_IN_MODELS) else "custom"


def config_leaves(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for each leaf of a resolved config, a config group standing for itself as typed:
    its `name` (head.name -> head=ce), or for a model its class (model._target_ -> model=cnn; a user's
    class stays a key of its own beside model=custom)."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "name" and prefix and not isinstance(value, (dict, list)):
                yield prefix, value
            elif key == "_target_" and prefix and isinstance(value, str):
                yield prefix, model_name(value)
                if model_name(value) == "custom":
                    yield f"{prefix}.{key}", value
            else:
                yield from config_leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif prefix:
        yield prefix, config


@dataclass
class ModelConfig:
    """A model is its class (`model._target_`), built as Class(in_shape=(1, H, W), n_outputs=K, **options).

    A built-in model is pneumolab.models.<name>.<Class> with conf/model/<name>.yaml naming it, which
    is how a user's own class (model=custom) is named too. The class checks its own keys; pneumolab
    adds `weights`, a state-dict file every seed starts from.
    """

    target: str
    options: dict = field(default_factory=dict)
    weights: Optional[str] = None

    @property
    def name(self) -> str:
        return model_name(self.target)

    @classmethod
    def from_dict(cls, node: dict) -> "ModelConfig":
        node = dict(node)
        target = node.pop("_target_", None)
        weights = node.pop("weights", None)
        _require(isinstance(target, str) and bool(target.strip()), "model._target_", target,
                 "name your nn.Module class, e.g. model._target_=mynets.TinyNet (a module importable from the "
                 "current directory or the environment).")
        # Whether the file exists and fits is checked when the model is built (models.check_model): a
        # finished run's record must stay readable after the file is gone.
        _require(weights is None or (isinstance(weights, str) and bool(weights.strip())), "model.weights", weights,
                 "give the path of a state-dict file (.safetensors, or one saved by torch.save), or null.")
        return cls(target=target, options=node, weights=weights)


def layer_sizes(options: dict) -> list | None:
    """A model's first list of ints (MLP widths, CNN channels): what titles show of its shape."""
    return next((v for v in options.values() if isinstance(v, list) and v and all(isinstance(x, int) for x in v)), None)


def built_in_model(name: str, **keys: Any) -> ModelConfig:
    """Built-in model `name` with its defaults from conf/model/<name>.yaml and `keys` over them."""
    node = OmegaConf.to_container(OmegaConf.load(Path(config_dir(), "model", f"{name}.yaml")))
    return ModelConfig.from_dict({**node, **keys})


# --- head --------------------------------------------------------------------

HEADS = ("bce", "ce")
CLASS_WEIGHTS = ("none", "balanced")


@dataclass
class HeadConfig:
    name: str = "bce"
    # "balanced": each training image's loss weighted inversely to its class's share of the
    # training split (both heads alike), so the rarer class counts as much as the common one.
    class_weights: str = "none"

    def __post_init__(self) -> None:
        _require(self.name in HEADS, "head.name", self.name,
                 "choose head=bce (one logit, sigmoid > 0.5) or head=ce (two logits, argmax).")
        _require(self.class_weights in CLASS_WEIGHTS, "head.class_weights", self.class_weights,
                 "use none (every image counts once) or balanced (weights inverse to the training split's class counts).")


# --- augment -----------------------------------------------------------------


@dataclass
class AugmentConfig:
    name: str = MISSING


@dataclass
class NoAugmentConfig(AugmentConfig):
    name: str = "none"


@dataclass
class BasicAugmentConfig(AugmentConfig):
    """Per-image random affine (rotation, shift, scale, optional flip) and intensity jitter."""

    name: str = "basic"
    rotation: float = 5.0  # degrees, drawn uniformly from [-rotation, rotation]
    translate: float = 0.05  # fraction of the image side, each axis
    scale: float = 0.1  # zoom factor drawn from [1 - scale, 1 + scale]
    brightness: float = 0.1  # pixel factor drawn from [1 - brightness, 1 + brightness]
    contrast: float = 0.1  # blend factor with the image's mean, drawn from [1 - contrast, 1 + contrast]
    hflip: bool = False  # off by default: a chest X-ray is not left-right symmetric

    def __post_init__(self) -> None:
        _require(0.0 <= self.rotation <= 180.0, "augment.rotation", self.rotation,
                 "use an angle in degrees from 0 (off) to 180, e.g. 10.")
        for key in ("translate", "scale", "brightness", "contrast"):
            _require(0.0 <= getattr(self, key) < 1.0, f"augment.{key}", getattr(self, key),
                     "use a fraction from 0 (off) to below 1, e.g. 0.1.")


# --- data --------------------------------------------------------------------


@dataclass
class DataConfig:
    """Keys every source shares. A source's schema names the functions that read it (`module:function`,
    each taking the config): `planner` says what loading will allocate, `loader` builds the Dataset;
    and `location`, its key that names the files it reads (None: it reads none)."""

    location = None
    name: str = MISSING
    batch_size: int = 32
    limit_per_class: Optional[int] = None
    # Downloads and decoded-image caches; null means $PNEUMOLAB_DATA or ~/.cache/pneumolab.
    cache_dir: Optional[str] = None

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "data.batch_size", self.batch_size, "use a batch size of at least 1.")
        _require(self.limit_per_class is None or self.limit_per_class >= 1, "data.limit_per_class",
                 self.limit_per_class, "use null (all images) or a cap of at least 1 image per class.")

    def resolved_cache_dir(self) -> Path:
        return cache_root(self.cache_dir)


def cache_root(cache_dir: str | None = None) -> Path:
    """Downloads and decoded images: `cache_dir`, else $PNEUMOLAB_DATA, else ~/.cache/pneumolab."""
    import os

    root = cache_dir or os.environ.get("PNEUMOLAB_DATA") or "~/.cache/pneumolab"
    return Path(root).expanduser()


@dataclass
class PhantomDataConfig(DataConfig):
    planner = "pneumolab.data.phantom:plan_phantom"
    loader = "pneumolab.data.phantom:load_phantom"
    name: str = "phantom"
    image_size: int = 28
    # PneumoniaMNIST's split sizes and class balance.
    n_train: int = 4708
    n_val: int = 524
    n_test: int = 624
    pneumonia_fraction_train: float = 0.742
    pneumonia_fraction_test: float = 0.625
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.image_size >= 8, "data.image_size", self.image_size, "use at least 8 pixels.")
        for key in ("n_train", "n_val", "n_test"):
            _require(getattr(self, key) >= 2, f"data.{key}", getattr(self, key), "use at least 2 images per split.")
        for key in ("pneumonia_fraction_train", "pneumonia_fraction_test"):
            _require(0.0 < getattr(self, key) < 1.0, f"data.{key}", getattr(self, key),
                     "use a fraction in (0, 1), so that both classes occur.")
        _require(_is_seed(self.seed), "data.seed", self.seed, f"use a seed {SEED_RANGE}.")


MEDMNIST_SIZES = (28, 64, 128, 224)


@dataclass
class PneumoniaMNISTDataConfig(DataConfig):
    planner = "pneumolab.data.medmnist:plan_pneumoniamnist"
    loader = "pneumolab.data.medmnist:load_pneumoniamnist"
    location = "path"
    name: str = "pneumoniamnist"
    size: int = 28
    path: Optional[str] = None
    # Where the npz comes from when `path` is null; {suffix} is "" for 28 px, else "_<size>".
    url: str = "https://zenodo.org/records/10519652/files/pneumoniamnist{suffix}.npz?download=1"

    def __post_init__(self) -> None:
        super().__post_init__()
        # A local npz may hold any size; data.size must then say which (checked against the file).
        _require(self.size in MEDMNIST_SIZES or (self.path is not None and self.size >= 1), "data.size", self.size,
                 f"PneumoniaMNIST comes in sizes {MEDMNIST_SIZES}; with data.path, give the npz's image size.")


@dataclass
class FolderDataConfig(DataConfig):
    planner = "pneumolab.data.folder:plan_folder"
    loader = "pneumolab.data.folder:load_folder"
    location = "root"
    name: str = "folder"
    root: str = MISSING
    image_size: int = 28
    val_fraction: float = 0.1
    # The seed of the validation holdout drawn from train (when val/ is missing or tiny), or
    # "per_seed": each training seed draws its own, so seed intervals include the split's variance.
    split_seed: Any = 0
    # How a non-square image becomes square: "center_crop" keeps its largest centred square, as
    # PneumoniaMNIST was made; "squeeze" resizes the whole image (what runs before this key did).
    resize: str = "center_crop"

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.image_size >= 1, "data.image_size", self.image_size, "use an image size of at least 1 pixel, e.g. 28.")
        _require(self.resize in ("squeeze", "center_crop"), "data.resize", self.resize,
                 "use center_crop (the largest centred square, as PneumoniaMNIST) or squeeze (the whole image).")
        _require(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "use a fraction in (0, 1), e.g. 0.1.")
        _require(self.split_seed == "per_seed" or (isinstance(self.split_seed, int) and not isinstance(self.split_seed, bool)
                                                  and _is_seed(self.split_seed)), "data.split_seed", self.split_seed,
                 f"use a seed {SEED_RANGE}, or per_seed for a holdout drawn by each training seed.")


# --- optimizer ---------------------------------------------------------------


@dataclass
class OptimizerConfig:
    """An optimizer option is its schema: the torch.optim class it builds and that class's keywords."""

    torch_class = ""  # in torch.optim
    fused = False  # whether the class takes fused=True (one kernel for the whole step)
    name: str = MISSING
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optimizer.lr", self.lr, "use a learning rate > 0, e.g. 1e-3.")
        _require(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, "use a value >= 0.")

    def keywords(self) -> dict[str, Any]:
        return {"lr": self.lr, "weight_decay": self.weight_decay}


@dataclass
class AdamConfig(OptimizerConfig):
    torch_class = "Adam"
    fused = True
    name: str = "adam"
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "optimizer.betas", self.betas,
                 "give two decay rates in [0, 1), e.g. [0.9,0.999].")
        _require(self.eps >= 0, "optimizer.eps", self.eps, "use a value >= 0, e.g. 1e-8.")

    def keywords(self) -> dict[str, Any]:
        return {**super().keywords(), "betas": tuple(self.betas), "eps": self.eps}


@dataclass
class AdamWConfig(AdamConfig):
    """Adam with decoupled weight decay (torch.optim.AdamW)."""

    torch_class = "AdamW"
    name: str = "adamw"
    weight_decay: float = 1e-2


@dataclass
class SGDConfig(OptimizerConfig):
    torch_class = "SGD"
    name: str = "sgd"
    lr: float = 1e-2
    momentum: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.momentum >= 0, "optimizer.momentum", self.momentum, "use a momentum >= 0, e.g. 0.9.")

    def keywords(self) -> dict[str, Any]:
        return {**super().keywords(), "momentum": self.momentum}


# --- scheduler ---------------------------------------------------------------


@dataclass
class SchedulerConfig:
    """A schedule option is its schema: the torch.optim.lr_scheduler class it builds (none: a constant rate)
    and that class's keywords for a run of `epochs`."""

    torch_class = None
    follows_each_seed = False  # reads each seed's own validation loss, so each seed needs its own optimizer
    name: str = MISSING

    def keywords(self, epochs: int) -> dict[str, Any]:
        return {}


@dataclass
class StepSchedulerConfig(SchedulerConfig):
    torch_class = "StepLR"
    name: str = "step"
    step_size: int = 10
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _require(self.step_size >= 1, "scheduler.step_size", self.step_size, "use a StepLR step size of at least 1 epoch.")
        _require(self.gamma > 0, "scheduler.gamma", self.gamma, "use a decay factor > 0, e.g. 0.1.")

    def keywords(self, epochs: int) -> dict[str, Any]:
        return {"step_size": self.step_size, "gamma": self.gamma}


@dataclass
class MultiStepSchedulerConfig(SchedulerConfig):
    torch_class = "MultiStepLR"
    name: str = "multistep"
    milestones: List[int] = field(default_factory=lambda: [10, 20])
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _require(all(m >= 1 for m in self.milestones), "scheduler.milestones", self.milestones, "use epochs >= 1.")

    def keywords(self, epochs: int) -> dict[str, Any]:
        return {"milestones": self.milestones, "gamma": self.gamma}


@dataclass
class CosineSchedulerConfig(SchedulerConfig):
    torch_class = "CosineAnnealingLR"
    name: str = "cosine"
    # null: anneal over all of trainer.epochs.
    t_max: Optional[int] = None
    eta_min: float = 0.0

    def __post_init__(self) -> None:
        _require(self.t_max is None or self.t_max >= 1, "scheduler.t_max", self.t_max,
                 "use null (anneal over trainer.epochs) or a period of at least 1 epoch.")

    def keywords(self, epochs: int) -> dict[str, Any]:
        return {"T_max": self.t_max or epochs, "eta_min": self.eta_min}


@dataclass
class PlateauSchedulerConfig(SchedulerConfig):
    torch_class = "ReduceLROnPlateau"
    follows_each_seed = True
    name: str = "plateau"
    factor: float = 0.1
    patience: int = 3

    def __post_init__(self) -> None:
        _require(0 < self.factor < 1, "scheduler.factor", self.factor, "use a factor in (0, 1).")

    def keywords(self, epochs: int) -> dict[str, Any]:
        return {"mode": "min", "factor": self.factor, "patience": self.patience}


@dataclass
class NoSchedulerConfig(SchedulerConfig):
    name: str = "none"


# --- trainer -----------------------------------------------------------------


@dataclass
class TrainerConfig:
    epochs: int = 30
    # A list of seeds, or a count: trainer.seeds=20 is seeds 0..19 (normalised to the list below).
    seeds: Any = field(default_factory=lambda: [0, 1, 2, 3, 4])
    device: str = "auto"
    eval_checkpoint: str = "last"
    # Train all seeds as one stacked model (fast); false trains them one after another.
    batched_seeds: bool = True
    # Intra-op threads per process; null picks 1, the fastest for these small matrices.
    threads: Optional[int] = None
    # CPU processes that share the seeds (at least two seeds each); null: one per core when
    # the job has the machine to itself (a single run, the basic launcher, a SLURM job),
    # else 1 (joblib and submitit_local already run a job per core).
    processes: Optional[int] = None
    # CUDA only: deterministic cuBLAS and kernels (slower). CPU runs are always deterministic.
    deterministic: bool = False

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "trainer.epochs", self.epochs, "train for at least 1 epoch.")
        self.seeds = _seed_list(self.seeds)
        _require(len(self.seeds) > 0, "trainer.seeds", self.seeds, "give at least one seed, e.g. trainer.seeds=[0,1,2,3,4].")
        _require(len(set(self.seeds)) == len(self.seeds), "trainer.seeds", self.seeds, "list each seed once.")
        _require(all(_is_seed(s) for s in self.seeds), "trainer.seeds", self.seeds, f"use seeds {SEED_RANGE}.")
        _require(self.eval_checkpoint in ("last", "best_val"), "trainer.eval_checkpoint", self.eval_checkpoint,
                 "use 'last' (weights after the final epoch) or 'best_val' (the epoch with the best validation accuracy).")
        _require(self.threads is None or self.threads >= 1, "trainer.threads", self.threads, "use null or a count >= 1.")
        most = max(1, len(self.seeds) // 2)
        _require(self.processes is None or 1 <= self.processes <= most, "trainer.processes", self.processes,
                 f"use null (automatic) or 1 to {most}: every process trains at least two of the "
                 f"{len(self.seeds)} seeds, so that no seed's numbers depend on how they were split.")
        _require(self.processes in (None, 1) or self.threads in (None, 1), "trainer.processes", self.processes,
                 "use several processes or several threads (trainer.threads), not both: worker processes "
                 "are forked, which is only safe before a thread pool exists.")
        dev = self.device
        _require(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
                 "trainer.device", dev, "use auto, cpu, cuda or cuda:N.")


# --- logger ------------------------------------------------------------------


@dataclass
class LoggerConfig:
    """A logger option is its schema: the module whose record(logger, job) sends a finished job to its tracker
    (None: no tracker), the extra of the same name it needs, and the server it talks to, if any."""

    tracker = None
    name: str = MISSING

    def health_url(self) -> Optional[str]:
        """A page its tracking server answers, checked once before training; None: no server."""
        return None


@dataclass
class NoLoggerConfig(LoggerConfig):
    name: str = "none"


@dataclass
class TensorBoardLoggerConfig(LoggerConfig):
    tracker = "pneumolab.outputs.tracking.tensorboard_tracker"
    name: str = "tensorboard"


@dataclass
class MLflowLoggerConfig(LoggerConfig):
    tracker = "pneumolab.outputs.tracking.mlflow_tracker"
    name: str = "mlflow"
    # A relative sqlite path is relative to the working directory, as users type it.
    tracking_uri: str = "sqlite:///outputs/mlflow.db"
    # null: the sweep directory for a multirun, the run directory for a single run.
    experiment_name: Optional[str] = None
    # Upload model.safetensors beside the figures.
    log_model: bool = True

    def __post_init__(self) -> None:
        _require(bool(self.tracking_uri.strip()), "logger.tracking_uri", self.tracking_uri,
                 "give a tracking URI, e.g. sqlite:///outputs/mlflow.db or http://127.0.0.1:5000.")

    def health_url(self) -> Optional[str]:
        uri = self.tracking_uri
        return uri.rstrip("/") + "/health" if uri.startswith(("http://", "https://")) else None


def _seed_list(seeds: Any) -> list[Any]:
    """trainer.seeds as a list: a count N stands for seeds 0..N-1."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        _require(seeds >= 1, "trainer.seeds", seeds, "give a count of at least 1 (trainer.seeds=5 is seeds 0..4) or a list.")
        return list(range(seeds))
    _require(isinstance(seeds, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds),
             "trainer.seeds", seeds, "give a count (trainer.seeds=20 is seeds 0..19) or a list of integers, "
             "e.g. trainer.seeds=[0,1,2,3,4].")
    return list(seeds)


# --- report metadata (set by conf/experiment/report/*) ----------------------


@dataclass
class ReportFigureConfig:
    figure: int = MISSING
    caption: str = MISSING
    reported_acc: float = MISSING


# --- root --------------------------------------------------------------------


@dataclass
class Config:
    model: Any = MISSING
    head: Any = MISSING
    data: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    report_figure: Optional[ReportFigureConfig] = None
    logger: Any = MISSING
    augment: Any = MISSING
    # Free text that names the run in summaries; experiment configs set it.
    tag: Optional[str] = None

    def __post_init__(self) -> None:
        if self.augment == MISSING:  # built in Python without the group: the report's setting
            self.augment = NoAugmentConfig()
        # A model has no schema (its class checks its own keys), so it arrives as a plain dict.
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)


SCHEMAS = {
    "head": {"head": HeadConfig},
    "data": {"phantom": PhantomDataConfig, "pneumoniamnist": PneumoniaMNISTDataConfig, "folder": FolderDataConfig},
    "optimizer": {"adam": AdamConfig, "adamw": AdamWConfig, "sgd": SGDConfig},
    "scheduler": {
        "step": StepSchedulerConfig,
        "multistep": MultiStepSchedulerConfig,
        "cosine": CosineSchedulerConfig,
        "plateau": PlateauSchedulerConfig,
        "none": NoSchedulerConfig,
    },
    "augment": {"none": NoAugmentConfig, "basic": BasicAugmentConfig},
    "logger": {"none": NoLoggerConfig, "tensorboard": TensorBoardLoggerConfig, "mlflow": MLflowLoggerConfig},
}


def register_configs() -> None:
    """Make the schemas available to the YAML files as `<group>/schema_<name>`."""
    cs = ConfigStore.instance()
    cs.store(name="schema_config", node=Config)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(group=group, name=f"schema_{name}", node=node)


def to_settings(cfg: DictConfig) -> Config:
    """Turn a composed config into validated dataclasses, or fail with a PneumolabError."""
    try:
        settings = OmegaConf.to_object(cfg)
    except PneumolabError:
        raise
    except OmegaConfBaseException as exc:
        raise PneumolabError(
            # OmegaConf's message spans lines (full_key, object_type): one paragraph.
            f"The configuration is incomplete or mistyped: {' '.join(str(exc).split())}. Check the key named above "
            "against `pneumolab --cfg job` and fix the override or YAML file."
        ) from None
    assert isinstance(settings, Config)
    return settings
