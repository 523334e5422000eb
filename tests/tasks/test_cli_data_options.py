"""Every DataModule option is visible, typed and settable through the CLI (``--print_config``, ``--help``)."""

from __future__ import annotations

import re
import sys

import pytest
import yaml
from conftest import CONFIGS

from ghost_vision.cli import train

SHARED = ("batch_size", "val_batch_size", "num_workers", "pin_memory", "skip_corrupt", "train_transform",
          "eval_transform", "train_transform_kwargs", "eval_transform_kwargs")


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ghost-vision"])  # LightningCLI warns when both argv and args are set


def _print_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exc:
        train([*args, "--print_config"])
    assert exc.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_print_config_lists_every_data_option_with_its_value(config, capsys):
    recipe = yaml.safe_load((CONFIGS / config).read_text())["data"]["init_args"]
    printed = _print_config(capsys, "--config", str(CONFIGS / config))["data"]["init_args"]
    assert set(SHARED) <= set(printed), sorted(printed)
    assert {"image_size"} <= set(printed) or {"crop_size", "scale", "eval_size"} <= set(printed)
    for key, value in recipe.items():  # what the recipe sets is what the CLI passes on
        assert printed[key] == value, (key, printed[key], value)


def test_data_options_are_overridable_and_typed(capsys):
    config = str(CONFIGS / "ssdlite_ghost_shapes.yaml")
    printed = _print_config(capsys, "--config", config, "--data.init_args.skip_corrupt", "true",
                            "--data.init_args.num_workers", "0", "--data.init_args.train_transform_kwargs",
                            "{scale: [0.5, 1.5]}")["data"]["init_args"]
    assert printed["skip_corrupt"] is True and printed["num_workers"] == 0
    assert printed["train_transform_kwargs"] == {"scale": [0.5, 1.5]}
    with pytest.raises(SystemExit):
        train(["--config", config, "--data.help", "ghost_vision.data.SyntheticCocoDataModule"])
    help_text = capsys.readouterr().out.split("Help for --data.help")[-1]
    # each option's help: its flag, its description (from the docstrings, may hold parentheses), its type
    types = dict(re.findall(r"--data\.(\w+)(?:(?!--data\.).)*?\(type:\s+(.+?),\s+default:", help_text, re.S))
    assert {k: types.get(k) for k in ("batch_size", "val_batch_size", "skip_corrupt", "pin_memory",
                                      "train_transform", "image_size")} == {
        "batch_size": "int", "val_batch_size": "int | null", "skip_corrupt": "bool", "pin_memory": "bool",
        "train_transform": "str | null", "image_size": "int"}
    assert set(SHARED) <= set(types)
    with pytest.raises(SystemExit):
        train(["--config", config, "--data.init_args.skip_corrupt", "sometimes"])
    assert "skip_corrupt" in capsys.readouterr().err
