"""The report's eight settings compose to SPEC's table, and one sweep selects exactly them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from pneumolab.config import config_dir
from pneumolab.config import register_configs, to_settings
from pneumolab.analysis.report import report_experiments

# SPEC, "Reproducing the report": id -> (head, batch size, StepLR step, lr, report's accuracy).
BASE_LR = 1e-3
SPEC_TABLE = {
    "fig1_bce": ("bce", 32, 10, BASE_LR, 0.7495),
    "fig2_ce": ("ce", 32, 10, BASE_LR, 0.7485),
    "fig3_ce_bs64": ("ce", 64, 10, BASE_LR, 0.728),
    "fig4_ce_bs128": ("ce", 128, 10, BASE_LR, 0.7605),
    "fig5_ce_step5": ("ce", 32, 5, BASE_LR, 0.7475),
    "fig6_ce_step20": ("ce", 32, 20, BASE_LR, 0.722),
    "fig7_ce_combo": ("ce", 128, 3, 1e-6, 0.83),
    "fig8_bce_combo": ("bce", 128, 3, 1e-6, 0.769),
}
CHOICES = [f"report/{name}" for name in SPEC_TABLE]


@pytest.fixture(scope="module")
def hydra_loader() -> Iterator[object]:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        yield GlobalHydra.instance().hydra.config_loader


def compose_report(name: str, *overrides: str) -> DictConfig:
    return compose(config_name="config", overrides=[f"experiment=report/{name}", *overrides])


def sweep_choices(override: str, loader: object) -> list[str]:
    """The values Hydra's sweeper expands `override` into, the way `pneumolab -m` does."""
    (parsed,) = OverridesParser.create(config_loader=loader).parse_overrides([override])
    return list(parsed.sweep_string_iterator())


@pytest.mark.parametrize("name", SPEC_TABLE)
def test_setting_composes_to_spec_table(hydra_loader: object, name: str) -> None:
    head, batch, step, lr, reported = SPEC_TABLE[name]
    cfg = compose_report(name)
    assert cfg.head.name == head
    assert cfg.data.batch_size == batch
    assert cfg.scheduler.name == "step" and cfg.scheduler.step_size == step
    assert cfg.optimizer.lr == pytest.approx(lr)
    assert cfg.report_figure.figure == int(name[3])
    assert cfg.report_figure.reported_acc == pytest.approx(reported)
    assert cfg.report_figure.caption
    assert cfg.tag == name
    to_settings(cfg)  # passes the schemas' value checks


@pytest.mark.parametrize("name", SPEC_TABLE)
def test_setting_shares_the_fixed_details(hydra_loader: object, name: str) -> None:
    cfg = compose_report(name)
    assert cfg.optimizer.name == "adam"
    assert cfg.scheduler.gamma == pytest.approx(0.1)
    assert cfg.trainer.epochs == 30
    assert list(cfg.trainer.seeds) == [0, 1, 2, 3, 4]
    assert list(cfg.model.hidden_sizes) == [128, 128, 128]
    assert cfg.model.negative_slope == pytest.approx(0.01)
    assert cfg.data.image_size == 28


@pytest.mark.parametrize("data", [["data=folder", "data.root=/x"], ["data=pneumoniamnist"]])
def test_setting_composes_with_every_data_source(hydra_loader: object, data: list[str]) -> None:
    cfg = compose_report("fig7_ce_combo", *data)
    assert cfg.data.name == data[0].split("=")[1]
    assert cfg.data.batch_size == 128


def test_command_line_overrides_win_over_the_settings(hydra_loader: object) -> None:
    cfg = compose_report("fig3_ce_bs64", "trainer.epochs=2", "optimizer.lr=0.01")
    assert cfg.trainer.epochs == 2
    assert cfg.optimizer.lr == pytest.approx(0.01)
    assert cfg.data.batch_size == 64


def test_report_sweep_selects_exactly_the_eight(hydra_loader: object) -> None:
    assert report_experiments() == CHOICES
    override = "experiment=" + ",".join(report_experiments())
    assert sweep_choices(override, hydra_loader) == CHOICES


def test_glob_over_the_report_group_selects_exactly_the_eight(hydra_loader: object) -> None:
    # The shared settings file sits outside report/, so a glob over the group cannot pick it up.
    assert sweep_choices("+experiment/report=glob(*)", hydra_loader) == list(SPEC_TABLE)
    assert "report_settings" in hydra_loader.get_group_options("experiment")
