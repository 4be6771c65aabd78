"""The real conf/ composed with Hydra's compose API, overridden as users would."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from pneumolab.config import config_dir
from pneumolab.config import (
    AdamConfig, FolderDataConfig, PhantomDataConfig, StepSchedulerConfig, register_configs, to_settings,
)
from pneumolab.errors import PneumolabError


def compose_settings(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return to_settings(compose(config_name="config", overrides=list(overrides)))


def test_defaults_match_the_spec():
    s = compose_settings()
    assert s.model.name == "mlp" and s.model.target == "pneumolab.models.mlp.MLP"
    assert s.model.options == {"hidden_sizes": [128, 128, 128], "negative_slope": 0.01, "dropout": 0.0}
    assert s.head.name == "bce"
    assert isinstance(s.data, PhantomDataConfig) and s.data.batch_size == 32 and s.data.limit_per_class is None
    assert isinstance(s.optimizer, AdamConfig) and s.optimizer.lr == 1e-3
    assert isinstance(s.scheduler, StepSchedulerConfig) and (s.scheduler.step_size, s.scheduler.gamma) == (10, 0.1)
    assert s.trainer.epochs == 30 and s.trainer.seeds == [0, 1, 2, 3, 4]
    assert s.trainer.device == "auto" and s.trainer.eval_checkpoint == "last"


def test_overrides_reach_the_typed_settings():
    s = compose_settings("head=ce", "data=folder", "data.root=/x", "data.batch_size=128",
                         "scheduler.step_size=3", "optimizer=sgd", "optimizer.lr=1e-6")
    assert s.head.name == "ce" and isinstance(s.data, FolderDataConfig)
    assert s.data.root == "/x" and s.data.batch_size == 128 and s.data.image_size == 28
    assert s.optimizer.name == "sgd" and s.optimizer.momentum == 0.9 and s.optimizer.lr == 1e-6
    assert s.scheduler.step_size == 3
    assert compose_settings("scheduler=cosine").scheduler.t_max is None


@pytest.mark.parametrize("override", ["data.batch_sise=3", "trainer.epoch=3", "model.hidden=3", "bogus=1"])
def test_a_typo_in_a_key_fails_at_composition(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_settings(override)


@pytest.mark.parametrize("override", ["data.batch_size=many", "trainer.epochs=1.5"])
def test_a_wrong_type_fails_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        compose_settings(override)


def test_seeds_by_count_or_list():
    assert compose_settings("trainer.seeds=20").trainer.seeds == list(range(20))
    assert compose_settings("trainer.seeds=[7,3]").trainer.seeds == [7, 3]


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data.batch_size=0"], "data.batch_size"),
        (["head.name=mse"], "head.name"),
        (["scheduler.step_size=0"], "scheduler.step_size"),
        (["trainer.seeds=[]"], "trainer.seeds"),
        (["trainer.seeds=0"], "trainer.seeds"),
        (["trainer.seeds=five"], "trainer.seeds"),
        (["trainer.seeds=[0,1.5]"], "trainer.seeds"),
        (["trainer.epochs=0"], "trainer.epochs"),
        (["trainer.device=tpu"], "trainer.device"),
        (["data=folder", "data.root=/x", "data.image_size=0"], "data.image_size"),
        (["optimizer.lr=-1"], "optimizer.lr"),
        (["trainer.processes=3"], "trainer.processes"),  # 5 seeds: at most 2 processes of 2+ seeds
        (["trainer.processes=0"], "trainer.processes"),
        (["trainer.processes=2", "trainer.threads=2"], "trainer.processes"),
    ],
)
def test_invalid_values_fail_with_the_key_named(overrides, key):
    with pytest.raises(PneumolabError, match=key.replace(".", r"\.")):
        compose_settings(*overrides)


def test_a_folder_without_root_says_so():
    with pytest.raises(PneumolabError, match="root"):
        compose_settings("data=folder")
