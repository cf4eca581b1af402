"""mtl-ops --help and --version: every option documented, defaults shown (TrainConfig's and the demo's, not
written twice), the registered methods listed."""
import argparse
import re

import pytest
import torch

import mtl_ops
from mtl_ops.cli import _HelpFormatter, build_parser, main
from mtl_ops.train.config import TRAIN_WIDTH, TrainConfig
from mtl_ops.train.demo import DEMO_DEFAULTS
from mtl_ops.train.methods import available_methods, get_method

COMMANDS = ("info", "bench", "train", "eval", "predict", "demo")


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _option_help(command: str) -> dict:
    """{option or positional name: its help as ``mtl-ops COMMAND --help`` prints it, before line wrapping}."""
    parser = _subparsers(build_parser())[command]
    formatter = _HelpFormatter(command)
    return {action.option_strings[-1] if action.option_strings else action.dest:
            formatter._expand_help(action) if action.help else ""
            for action in parser._actions if not isinstance(action, argparse._HelpAction)}


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"mtl-ops {mtl_ops.__version__} (torch {torch.__version__})"


def test_every_command_is_listed_with_its_help():
    text = build_parser().format_help()
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", text, re.M), command
    assert "--version" in text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_documented(command):
    for name, text in _option_help(command).items():
        assert len(text) > 10, f"mtl-ops {command} {name}: no help"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_with_a_default_shows_it(command):
    parser = _subparsers(build_parser())[command]
    helps = _option_help(command)
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[-1]
        if action.default not in (None, False):
            shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
            assert f"(default: {shown})" in helps[name], (command, name, helps[name])


def _config_value(name):
    field = TrainConfig.__dataclass_fields__[name]
    value = field.default_factory() if callable(field.default_factory) else field.default
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def test_train_options_show_trainconfigs_defaults():
    helps = _option_help("train")
    flags = {a.option_strings[-1] for a in _subparsers(build_parser())["train"]._actions
             if isinstance(a, argparse._StoreTrueAction)}  # off unless given
    checked = 0
    for name, text in helps.items():
        field = name.lstrip("-").replace("-", "_")
        if field not in TrainConfig.__dataclass_fields__ or name in flags:
            continue
        assert "(default: " in text, (name, text)
        value = _config_value(field)
        if value not in ("None", "{}", "False", "True"):  # those are explained in words
            assert f"(default: {value})" in text, (name, text)
            checked += 1
    assert checked >= 14
    # width's field default is None ("the trainer's width"), shown as the width it stands for
    assert f"(default: {TRAIN_WIDTH})" in helps["--width"] and "refused with a timm or torchvision" in helps["--width"]
    assert "(default: 4)" in helps["--epochs"] and TrainConfig().epochs == 4


def test_demo_options_show_the_demos_defaults():
    helps = _option_help("demo")
    for name, value in DEMO_DEFAULTS.items():
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        assert f"(default: {shown})" in helps["--" + name.replace("_", "-")]


def test_method_help_lists_every_registered_method():
    methods = available_methods()
    assert len(methods) >= 7
    help_text = _option_help("train")["--method"]
    for method in methods:
        assert method in help_text
    epilog = _subparsers(build_parser())["train"].format_help().split("methods:", 1)[1]
    for method in methods:
        assert re.search(rf"^\s+{method}\s+{re.escape(get_method(method).description[:30])}", epilog, re.M), method
    demo_help = _option_help("demo")["--methods"]
    assert all(m in demo_help for m in methods)


def test_help_exits_cleanly(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert f"usage: mtl-ops {command}" in capsys.readouterr().out
