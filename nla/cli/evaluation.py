"""What an evaluation command (validate, test, predict, label-issues) takes from the run of its checkpoint: the data
it was trained on where no other is named, the input it was trained with whatever the data, and no logger where the
run had none."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace

from nla.cli import args as command_line
from nla.data.base import FERDataModule
from nla.errors import UserError
from nla.rundir import run_of_checkpoint
from nla.settings import CLASS_PATH_KEY, import_class, plain, same


def explicit_init_args(data: Namespace, data_class: type) -> dict[str, Any]:
    """The init arguments of a DataModule config that differ from the class's defaults: those a user gave."""
    defaults: dict[str, Any] = {}
    for klass in reversed([k for k in data_class.__mro__ if issubclass(k, FERDataModule)]):
        defaults.update(
            {
                name: p.default
                for name, p in inspect.signature(klass).parameters.items()
                if p.default is not inspect.Parameter.empty
            }
        )
    values = plain(data.get("init_args") or Namespace())
    return {key: value for key, value in values.items() if key in defaults and not same(value, plain(defaults[key]))}


@dataclass
class EvaluatedRun:
    """The checkpoint an evaluation command runs (loaded, and its path), whether the command named no dataset (the
    run's own is used), and the command line it was given."""

    checkpoint: dict[str, Any]
    path: Path
    data_from_run: bool
    given_args: list[str]

    def settle(self, parser: Any, config: Namespace, subcommand: str, command: str) -> Namespace:
        """``config`` (the whole parsed config) with the run's data, input and logger settled for ``subcommand``."""
        config = self.data(parser, config, subcommand, command)
        self.input(config[subcommand])
        self.logger(config[subcommand].trainer)
        return config

    def data(self, parser: Any, config: Namespace, subcommand: str, command: str) -> Namespace:
        """With no ``--data``, the run's own data (its root checked here), with what the command line gave."""
        saved = dict(self.checkpoint.get("datamodule_hyper_parameters") or {})
        class_path = saved.pop(CLASS_PATH_KEY, None)
        saved = {key: value for key, value in saved.items() if not key.startswith("_")}
        data = config[subcommand].get("data")
        chosen = data.get("class_path") if isinstance(data, Namespace) else None
        if class_path and (chosen is None or self.data_from_run or import_class(chosen) is FERDataModule):
            given = explicit_init_args(data, import_class(chosen)) if chosen else {}  # no dataset named: the run's own
            recorded = saved.get("root")
            if recorded and "root" not in given and not Path(recorded).is_dir():
                relative = "" if Path(recorded).is_absolute() else ", a path relative to where it was trained"
                raise UserError(
                    f"{self.path} was trained on --data.root {recorded!r}{relative}, which is not a folder here: pass "
                    "--data.root /path/to/the/dataset"
                )
            change = {subcommand: {"data": {"class_path": class_path, "init_args": {**saved, **given}}}}
            return parser.parse_object(change, config)
        if chosen is None:
            raise UserError(
                f"nla {command}: {self.path} does not say what data it was trained on; choose a dataset with --data "
                "(e.g. --data nla.data.ImageFolderDataModule --data.root DIR)"
            )
        return config

    def input(self, config: Namespace) -> None:
        """The input the model was trained with, whatever the data; a different one given is refused."""
        saved = dict(self.checkpoint.get("datamodule_hyper_parameters") or {}).get("preprocessing")
        if not saved:
            return
        given_input = config.data.init_args.get("preprocessing") or Namespace()
        for key in command_line.given_under(self.given_args, "--data.preprocessing."):
            if not same(given_input.get(key), saved.get(key)):
                raise UserError(
                    f"--data.preprocessing.{key} {given_input.get(key)!r}: the model in {self.path} was trained with "
                    f"{key} {saved.get(key)!r}, and is evaluated on that input; leave --data.preprocessing.* out"
                )
        config.data.init_args.preprocessing = Namespace(
            {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
        )

    def logger(self, trainer: Namespace) -> None:
        """No logger where the run trained without one (``--trainer.logger false``) and this command names none: an
        evaluation does not start a W&B run that its training never had."""
        if command_line.names_logger(self.given_args):
            return
        run = run_of_checkpoint(self.path)
        saved = run / "config.yaml" if run is not None else None
        try:
            recorded = yaml.safe_load(saved.read_text()) if saved is not None and saved.is_file() else None
        except (OSError, yaml.YAMLError):
            return
        if isinstance(recorded, dict) and (recorded.get("trainer") or {}).get("logger", True) in (False, None):
            trainer.logger = False
