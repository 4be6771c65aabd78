"""Optional extras: the packages a feature needs, and a message naming the pip command when one is missing.

The core install trains and writes files only; trackers, the Optuna search and model=resnet
(torchvision) come as extras.
"""

from __future__ import annotations

import importlib.util
import sys

from pneumolab.errors import PneumolabError

# Extra name -> {module pneumolab imports: the package on PyPI that installs it}.
EXTRA_MODULES = {
    "tensorboard": {"tensorboard": "tensorboard"},
    "mlflow": {"mlflow": "mlflow-skinny", "sqlalchemy": "sqlalchemy", "alembic": "alembic", "filelock": "filelock"},
    "optuna": {"optuna": "optuna", "hydra_plugins.hydra_optuna_sweeper": "hydra-optuna-sweeper"},
    "resnet": {"torchvision": "torchvision"},
}
# Config choices on the command line that need an extra: (group, option) -> extra. (A model that needs
# one says so when its class is imported: models/target.py.)
CHOICE_EXTRAS = {
    ("hparams_search", "optuna"): "optuna",
    ("logger", "tensorboard"): "tensorboard",
    ("logger", "mlflow"): "mlflow",
}


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def require_extra(extra: str, feature: str) -> None:
    """Raise a PneumolabError naming the pip command when a module of `extra` is missing."""
    missing = [package for module, package in EXTRA_MODULES[extra].items() if not importable(module)]
    if missing:
        raise PneumolabError(
            f"{feature} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed "
            f"for {sys.executable}. Install the '{extra}' extra: pip install -e '.[{extra}]' in the pneumolab "
            f"checkout, or pip install 'pneumolab[{extra}]'; then run the command again."
        )


def require_extras_for_choices(choices: list[tuple[str, str]]) -> None:
    """Check the extras that the command line's (group, option) choices need, before Hydra composes anything.

    Hydra alone would fail on a missing sweeper plugin with a config-search error that
    does not say what to install, and a sweep would fail every point one by one.
    """
    for group, option in choices:
        extra = CHOICE_EXTRAS.get((group, option))
        if extra:
            require_extra(extra, f"{group}={option}")
