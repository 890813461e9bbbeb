"""The ``nla`` command: LightningCLI's ``fit``, ``validate``, ``test`` and ``predict``, and nla's ``label-issues``,
``experiment``, ``export`` and ``compare``, as subcommands of one parser.

Every Lightning subcommand starts from nla's defaults (``nla/defaults.yaml``: the paper's trainer, the
callbacks, offline W&B) beneath any ``--config``. Run directories follow :mod:`nla.rundir`: a fit writes
into ``trainer.default_root_dir`` (``runs/<dataset>`` unless given) and holds a lock on it; resuming
(``--ckpt_path last``) is the only way back into a directory that holds a run, and may change only the
settings that can change mid-run. ``validate``, ``test``, ``predict`` and ``label-issues`` take the model, its
classes and its preprocessing from ``--ckpt_path`` and write into a fresh sub-folder of the checkpoint's run.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import importlib
import inspect
import logging
import math
import os
import re
import signal
import sys
import typing
import warnings
from argparse import ArgumentError
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from jsonargparse.typing import PositiveInt
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks import ProgressBar as ProgressBarBase
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from nla import label_issues
from nla.backbone import WeightsMismatchError, load_trusted
from nla.callbacks import RunConfigSaver
from nla.data.datamodule import FERDataModule
from nla.errors import UserError, check_seed, read_yaml
from nla.loggers import wandb_available
from nla.module import NLAModule
from nla.rundir import RunDirectoryError, RunLock, fresh_folder, holds_run, resolve_checkpoint, run_of_checkpoint

DEFAULTS = Path(__file__).with_name("defaults.yaml")
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
EVALUATION_COMMANDS = ("validate", "test", "predict", "label-issues")
DESCRIPTIONS = {
    "fit": "Train a model (the paper's recipe unless told otherwise); resume a run with --ckpt_path last",
    "validate": "Evaluate a checkpoint on the validation split of its data",
    "test": "Evaluate a checkpoint on a test split, of its own dataset or of another (classes matched by name)",
    "predict": "Predict the expression in every image of a folder from a checkpoint, into a CSV",
    "label-issues": "Rank the training images whose labels are probably wrong, by the NAW weight of a checkpoint",
}
#: Set by the first process of a distributed evaluation, so that the others write into the same folder.
OUTPUT_ENV = "NLA_COMMAND_DIR"

#: Settings a resumed fit may not change: they define the model or the training data.
FIXED_ON_RESUME = {  # by the setting's name within its group
    "model": ("backbone",),
    "data": (
        "noise_rate",
        "noise_seed",
        "noise_source",
        "train_label_file",
        "imbalance_factor",
        "long_tail_seed",
        "long_tail_class_order",
        "val_fraction",
        "num_folds",
        "fold",
        "group_pattern",
        "split_seed",
        "num_classes",
        "label_source",
        "layout",
        "crop_face",
        "class_names",
        "train_csv",
        "image_size",
        "mean",
        "std",
        "val_split",
    ),
}


class ExtraCommand:
    """A subcommand of nla's own: a parser and the function that runs a parsed config."""

    def __init__(self, help: str, parser: Callable[[], ArgumentParser], run: Callable[[Namespace], None]) -> None:
        self.help, self.parser, self.run = help, parser, run


def _extra_commands() -> dict[str, ExtraCommand]:
    from nla import compare, experiment, export

    return {
        "experiment": ExtraCommand(experiment.HELP, experiment.build_parser, experiment.run),
        "export": ExtraCommand(export.HELP, export.build_parser, export.run),
        "compare": ExtraCommand(compare.HELP, compare.build_parser, compare.run),
    }


def launched_process() -> bool:
    """Whether this is a second (or later) process of a distributed run; the first one makes the decisions."""
    return any(int(os.environ.get(key, 0) or 0) for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _plain(value: Any) -> Any:
    """A jsonargparse namespace as plain dicts and lists."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"model.criterion.lam": 0.5, ...}``."""
    value = _plain(value)
    if isinstance(value, dict):
        leaves: dict[str, Any] = {}
        for key, inner in value.items():
            leaves.update(_leaves(inner, f"{prefix}{key}."))
        return leaves
    return {prefix[:-1]: value}


NON_FINITE = {"nan": ".nan", "inf": ".inf", "+inf": ".inf", "-inf": "-.inf", "infinity": ".inf", "-infinity": "-.inf"}


def _yaml_number(arg: str) -> str:
    """``nan`` and ``inf`` as YAML writes them (``.nan``, ``.inf``), so that a value check can name them."""
    name, equals, value = arg.rpartition("=") if arg.startswith("--") else ("", "", arg)
    spelled = NON_FINITE.get(value.lower())
    return f"{name}{equals}{spelled}" if spelled else arg


def _option(args: Sequence[str], name: str) -> Optional[str]:
    """The value of ``--name value`` or ``--name=value`` on a command line (the last one given)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _config_files(args: Sequence[str]) -> list[Path]:
    """The files a command line gives with ``--config``, ``-c`` or ``--config=``."""
    paths = [
        args[i + 1] if arg in ("--config", "-c") and i + 1 < len(args) else arg.split("=", 1)[1]
        for i, arg in enumerate(args)
        if (arg in ("--config", "-c") and i + 1 < len(args)) or arg.startswith("--config=")
    ]
    return [Path(path) for path in paths]


def _names_data(args: Sequence[str]) -> bool:
    """Whether a command line chooses a dataset, itself or in one of its --config files."""
    if any(arg in ("--data",) or arg.startswith("--data=") for arg in args):
        return True
    for path in _config_files(args):
        if path.is_file():
            loaded = read_yaml(path) or {}
            if isinstance(loaded, dict) and isinstance(loaded.get("data"), (dict, str)):
                return True
    return False


def _names_logger(args: Sequence[str]) -> bool:
    """Whether a command line chooses or configures the logger, itself or in one of its --config files."""
    if any(arg.split("=", 1)[0].startswith("--trainer.logger") for arg in args):
        return True
    for path in _config_files(args):
        if path.is_file():
            loaded = read_yaml(path) or {}
            trainer = loaded.get("trainer") if isinstance(loaded, dict) else None
            if isinstance(trainer, dict) and "logger" in trainer:
                return True
    return False


def _explicit_init_args(data: Namespace, data_class: type) -> dict[str, Any]:
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
    values = _plain(data.get("init_args") or Namespace())
    return {key: value for key, value in values.items() if key in defaults and not _same(value, _plain(defaults[key]))}


def _is_callback(callback: Any, kind: type) -> bool:
    """Whether a trainer callback (a config entry or an object) is a ``kind``."""
    if isinstance(callback, Namespace) and callback.get("class_path"):
        return issubclass(_import(callback.class_path), kind)
    return isinstance(callback, kind)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return a == b


class NLACLI(LightningCLI):
    """LightningCLI with nla's defaults, run directories, checkpoint handling and extra subcommands."""

    def __init__(self, args: Optional[Sequence[str]] = None, **kwargs: Any) -> None:
        self._extra = _extra_commands()
        self._lock: Optional[RunLock] = None
        self._checkpoint: Optional[dict[str, Any]] = None
        self._checkpoint_path: Optional[Path] = None
        self._data_from_run = False  # an evaluation command that named no dataset: the checkpoint's own
        self._resume_note: Optional[str] = None
        self._output: Optional[Path] = None  # the fresh folder of an evaluation command
        parser_kwargs: dict[str, Any] = {
            "prog": "nla",
            "description": "nla: facial expression recognition with NLA (AAAI 2025) and its baselines. "
            "`nla <command> --help` describes each command.",
            "exit_on_error": False,  # main() says what was wrong in one line, without a page of usage
        }
        for command in LIGHTNING_COMMANDS:
            parser_kwargs[command] = {"default_config_files": [str(DEFAULTS)], "exit_on_error": False}
        kwargs.setdefault("parser_kwargs", parser_kwargs)
        try:
            super().__init__(
                NLAModule,
                FERDataModule,
                subclass_mode_data=True,
                save_config_callback=RunConfigSaver,
                auto_configure_optimizers=False,
                args=list(args) if args is not None else None,
                **kwargs,
            )
        except BaseException:  # a command that failed before writing anything leaves no folder behind
            if self._output is not None and not any(self._output.iterdir()):
                self._output.rmdir()
            if self._lock is not None:
                self._lock.release(tidy=True)
            raise
        finally:  # a failed command frees its run directory at once (a process could run another command)
            if self._lock is not None:
                self._lock.release()

    # --- one parser: Lightning's subcommands and nla's ----------------------------------------------

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        self._subcommand_parsers: dict[str, Any] = {}
        subcommands = parser.add_subcommands()
        for name in (*self.subcommands(), "label-issues"):
            description = DESCRIPTIONS[name]
            options = {"description": description, **kwargs.get(name, kwargs.get("predict", {}))}
            method = "predict" if name == "label-issues" else name  # it applies a model like predict does
            subparser: Any = self._prepare_subcommand_parser(self.trainer_class, method, **options)  # type: ignore[arg-type]
            subparser.set_defaults(weights_only=True)  # checkpoints are read without unpickling arbitrary objects
            if name == "label-issues":
                subparser.add_argument("--top", type=PositiveInt, default=36, help="suspects shown in label_issues.png")
            self._set_help(subparser)
            self._subcommand_parsers[name] = subparser
            subcommands.add_subcommand(name, subparser, help=description)
        for name, command in self._extra.items():
            subparser = command.parser()
            self._subcommand_parsers[name] = subparser
            subcommands.add_subcommand(name, subparser, help=command.help)

    @staticmethod
    def _set_help(parser: Any) -> None:
        """Correct Lightning's help texts where nla does something else."""
        corrections = {
            "--trainer.precision": "Precision: null (nla's default) is bf16-mixed on a GPU and 32-true on a CPU; or "
            "32-true, bf16-mixed, 16-mixed, ...",
            "--trainer.default_root_dir": "The run directory: a fit writes its config, checkpoints, summary, figures "
            "and logs here (null: runs/<dataset>); validate, test and predict write into a "
            "fresh <command>[-n] folder inside it (null: the checkpoint's run).",
        }
        for action in parser._actions:
            for option in action.option_strings:
                if option in corrections:
                    action.help = corrections[option]

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand in self._extra:
            self._extra[subcommand].run(self.config[subcommand])
            return
        if subcommand == "label-issues":
            config = self.config[subcommand]
            if not config.get("ckpt_path"):
                raise UserError("nla label-issues needs a trained model: pass --ckpt_path")
            found = label_issues.run(self.trainer, self.model, self.datamodule, config.ckpt_path, config.top)
            report_label_issues(found)
            return
        super()._run_subcommand(subcommand)

    def _set_seed(self) -> None:
        if self.config.get("subcommand") not in self._extra:
            seed = self._get(self.config, "seed_everything")
            if isinstance(seed, int) and not isinstance(seed, bool):
                check_seed(seed, "--seed_everything")
            super()._set_seed()

    def instantiate_classes(self) -> None:
        if self.subcommand in self._extra:
            self.model = self.datamodule = self.trainer = None  # type: ignore[assignment]
            return
        config = self.config[self.subcommand] if self.subcommand else self.config
        model = config.model
        weights = model.get("pretrained_weights") if config.get("ckpt_path") else None
        if weights:  # a fit from a checkpoint takes the weights from it: the file may be gone, and is not read
            model.pretrained_weights = None
        try:
            self.config_init = self.parser.instantiate(self.config)
        finally:
            if weights:
                model.pretrained_weights = weights
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        if weights:
            self.model.hparams["pretrained_weights"] = weights  # the record of where the run started
        self.trainer = self.instantiate_trainer()

    # --- checkpoints -----------------------------------------------------------------------------------

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """An evaluation command given a checkpoint and no dataset uses the dataset the checkpoint was trained on."""
        given = (
            list(sys.argv[1:] if args is None else args) if args is None or isinstance(args, (list, tuple)) else None
        )
        if given and any(_yaml_number(arg) != arg for arg in given):
            args = given = [_yaml_number(arg) for arg in given]
        for path in _config_files(given or []):
            if path.is_file():
                read_yaml(path)  # jsonargparse's message names neither the file nor, often, the line
        if given and given[0] in EVALUATION_COMMANDS and not _names_data(given):
            ckpt = _option(given, "--ckpt_path")
            if ckpt:
                root = Path(_option(given, "--trainer.default_root_dir") or ".")
                checkpoint = self._load_checkpoint(resolve_checkpoint(ckpt, root))
                class_path = (checkpoint.get("datamodule_hyper_parameters") or {}).get("_class_path")
                if class_path:
                    args = [given[0], "--data", class_path, *given[1:]]
                    self._data_from_run = True
        self._given_args = list(given or [])
        if given is not None:  # Lightning's own method warns when it gets arguments and sys.argv has some too
            self.config = parser.parse_args(args if args is not None else given)
        else:
            super().parse_arguments(parser, args)

    def _load_checkpoint(self, path: Path) -> dict[str, Any]:
        if self._checkpoint_path != path:
            checkpoint = load_trusted(path, what="checkpoint")
            if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
                raise WeightsMismatchError(f"{path} is not a checkpoint written by nla fit (it has no 'state_dict')")
            self._checkpoint, self._checkpoint_path = checkpoint, path
        assert self._checkpoint is not None
        return self._checkpoint

    def _parse_ckpt_path(self) -> None:
        """Evaluation commands take the model (its classes and architecture) from ``--ckpt_path``; a fit's
        checkpoint is checked in :meth:`before_instantiate_classes` instead."""
        subcommand = self.config.get("subcommand")
        if subcommand not in EVALUATION_COMMANDS or not self.config[subcommand].get("ckpt_path"):
            return
        config = self.config[subcommand]
        path = resolve_checkpoint(config.ckpt_path, self._run_root(config))
        config.ckpt_path = str(path)
        hparams = dict(self._load_checkpoint(path).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        hparams.pop("_class_path", None)
        hparams["pretrained_weights"] = None  # the checkpoint holds the weights
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def _check_resume(self, path: Path, config: Namespace) -> None:
        """Refuse a resume that changes what defines the run; say which settings change and take effect."""
        checkpoint = self._load_checkpoint(path)
        root = config.trainer.default_root_dir
        saved_data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
        old_class, new_class = saved_data.get("_class_path"), config.data.get("class_path")
        if old_class and new_class and old_class != new_class:
            raise RunDirectoryError(
                f"cannot resume {root!r} with --data {new_class}: the run was trained on "
                f"{old_class}; start a new run with another --trainer.default_root_dir"
            )
        for key in ("mean", "std"):  # measured when the run started: keep what the model was trained with
            if config.data.init_args.get(key) is None and saved_data.get(key) is not None:
                config.data.init_args[key] = tuple(saved_data[key])
        old = {**_leaves(checkpoint.get("hyper_parameters") or {}, "model."), **_leaves(saved_data, "data.")}
        new = {**_leaves(config.model, "model."), **_leaves(config.data.init_args, "data.")}
        changed = []
        for key, value in new.items():
            name = key.split(".", 1)[1]
            if key not in old or name.startswith("_") or _same(old[key], value):
                continue
            if key.split(".")[0] == "model" and name in ("num_classes", "class_names", "pretrained_weights"):
                continue  # derived from the data, or only used to initialise
            if name in FIXED_ON_RESUME[key.split(".")[0]]:
                raise RunDirectoryError(
                    f"cannot resume {root!r} with {key}={value!r}: the run was trained with {old[key]!r}, and a "
                    f"resumed run keeps its {'model' if key.startswith('model') else 'training data and input'}; start "
                    "a new run "
                    "with another --trainer.default_root_dir"
                )
            changed.append(f"{key} {old[key]!r} -> {value!r}")
        if changed:
            self._resume_note = (
                f"nla: resuming {root} with changed settings, which apply from epoch "
                f"{checkpoint.get('epoch', 0) + 1} on: {'; '.join(changed)}"
            )

    def before_fit(self) -> None:
        if self._resume_note:
            print(self._resume_note, file=sys.stderr)

    # --- run directories ----------------------------------------------------------------------------

    def _run_root(self, config: Namespace) -> Path:
        if config.trainer.default_root_dir:
            return Path(config.trainer.default_root_dir)
        ckpt = config.get("ckpt_path")
        if ckpt and ckpt not in ("last", "best") and Path(ckpt).is_file():
            run = run_of_checkpoint(Path(ckpt))
            return run if run is not None else Path("runs") / Path(ckpt).stem
        data = config.get("data")
        data_class = (
            _import(data.class_path) if isinstance(data, Namespace) and data.get("class_path") else FERDataModule
        )
        return Path("runs") / getattr(data_class, "name", "data")

    def before_instantiate_classes(self) -> None:
        subcommand = self.subcommand
        if subcommand in self._extra or subcommand is None:
            return
        config = self.config[subcommand]
        trainer = config.trainer
        if trainer.precision is None:
            trainer.precision = default_precision(trainer.accelerator)
        if trainer.accelerator in ("gpu", "cuda") and not (
            torch.cuda.is_available() or torch.backends.mps.is_available()
        ):
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a build without CUDA"
            raise UserError(
                f"--trainer.accelerator {trainer.accelerator}: PyTorch finds no GPU on this machine (torch "
                f"{torch.__version__}, {build}); leave it at auto to run on the CPU"
            )
        root = self._run_root(config)
        self._without_wandb(trainer)
        # nla's defaults add checkpoint callbacks and a progress bar, which Lightning refuses beside
        # enable_checkpointing false and enable_progress_bar false
        for setting, kind in (("enable_checkpointing", ModelCheckpoint), ("enable_progress_bar", ProgressBarBase)):
            if trainer.get(setting) is False and trainer.callbacks:
                trainer.callbacks = [c for c in trainer.callbacks if not _is_callback(c, kind)]
        if subcommand == "fit":
            for limit, more in (
                ("max_epochs", "1 or more (-1: no limit)"),
                ("max_steps", "1 or more (-1: no limit)"),
                ("limit_train_batches", "a count of batches or a fraction above 0"),
            ):
                if trainer.get(limit) == 0:
                    raise UserError(f"trainer.{limit}={trainer.get(limit)} trains nothing; give {more}")
            trainer.default_root_dir = str(root)
            if config.ckpt_path:
                path = resolve_checkpoint(config.ckpt_path, root)
                config.ckpt_path = str(path)
                self._load_checkpoint(path)  # a file that is no nla checkpoint stops here, in one line
            if not launched_process():
                self._lock = RunLock(root).acquire()
                own = config.ckpt_path and run_of_checkpoint(Path(config.ckpt_path)) == root.resolve()
                if own:
                    self._check_resume(Path(config.ckpt_path), config)
                elif holds_run(root):
                    how = "resume it with --ckpt_path last, or " if not config.ckpt_path else ""
                    raise RunDirectoryError(
                        f"run directory {str(root)!r} already holds a run; {how}start this one in another "
                        "--trainer.default_root_dir"
                        + (
                            " (a checkpoint of another run starts a new run, which needs a directory of its own)"
                            if config.ckpt_path
                            else ""
                        )
                    )
            self._checkpoint = self._checkpoint_path = None  # checked; Lightning reads it again to resume
        else:
            if launched_process():
                output = Path(os.environ.get(OUTPUT_ENV) or root)
            else:
                output = self._output = fresh_folder(root, subcommand)
                os.environ[OUTPUT_ENV] = str(output)
            trainer.default_root_dir = str(output)
            if self._checkpoint is not None:
                self._data_from_checkpoint(config)
                config = self.config[subcommand]
            elif config.get("data") is None:
                raise UserError(needs_model_and_data(subcommand))
        self._name_loggers(config.trainer, root if subcommand == "fit" else Path(config.trainer.default_root_dir))

    def _without_wandb(self, trainer: Namespace) -> None:
        """Where the wandb package is missing, nla's default W&B logger becomes a CSV logger, with a note; a W&B
        logger the command asked for is one line saying what to do."""
        loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        wandb_loggers = [
            logger
            for logger in loggers
            if isinstance(logger, Namespace) and issubclass(_import(logger.class_path), LightningWandbLogger)
        ]
        if not wandb_loggers or wandb_available():
            return
        if _names_logger(self._given_args):
            raise UserError(
                "a W&B logger needs the wandb package, which is not installed: pip install wandb, or log to CSV "
                "(--trainer.logger lightning.pytorch.loggers.CSVLogger) or not at all (--trainer.logger false)"
            )
        # <run dir>/csv/version_<n>/metrics.csv: a new version for each command, so nothing is overwritten
        csv = Namespace(
            class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir=None, name="csv")
        )
        replaced = [csv if logger in wandb_loggers else logger for logger in loggers]
        trainer.logger = replaced if isinstance(trainer.logger, list) else replaced[0]
        if not launched_process():
            print(
                "nla: wandb is not installed: logging to CSV in <run dir>/csv instead (pip install wandb for W&B)",
                file=sys.stderr,
            )

    def _data_from_checkpoint(self, config: Namespace) -> None:
        """Evaluate with the preprocessing the model was trained with; with no ``--data``, on the run's own data."""
        assert self._checkpoint is not None
        saved = dict(self._checkpoint.get("datamodule_hyper_parameters") or {})
        class_path = saved.pop("_class_path", None)
        saved = {key: value for key, value in saved.items() if not key.startswith("_")}
        data = config.get("data")
        chosen = data.get("class_path") if isinstance(data, Namespace) else None
        if class_path and (chosen is None or self._data_from_run or _import(chosen) is FERDataModule):
            given = _explicit_init_args(data, _import(chosen)) if chosen else {}  # no dataset named: the run's own
            self.config = self.parser.parse_object(
                {self.subcommand: {"data": {"class_path": class_path, "init_args": {**saved, **given}}}}, self.config
            )
            config = self.config[self.subcommand]
        elif chosen is None:
            raise UserError(
                f"nla {self.subcommand}: {self._checkpoint_path} does not say what data it was trained on; "
                "choose a dataset with --data (e.g. --data nla.data.ImageFolderDataModule --data.root DIR)"
            )
        for key in ("image_size", "mean", "std"):
            if saved.get(key) is not None:
                config.data.init_args[key] = tuple(saved[key]) if isinstance(saved[key], (list, tuple)) else saved[key]

    @staticmethod
    def _name_loggers(trainer: Namespace, run: Path) -> None:
        """Loggers whose folder or run name is left unset write into the run directory and take its name."""
        loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        for logger in loggers:
            init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
            if init_args is None:
                continue
            if "save_dir" in init_args and init_args.save_dir in (None, ".", "./"):
                init_args.save_dir = str(run if trainer.default_root_dir is None else trainer.default_root_dir)
            if "name" in init_args and init_args.name is None:
                parent = run.parent.name if run.name.split("-")[0] in EVALUATION_COMMANDS else None
                init_args.name = f"{parent}/{run.name}" if parent else run.name


def report_label_issues(found: dict[str, Any]) -> None:
    print(
        f"{found['images']} training images ranked, most suspicious first: {found['csv']} (top suspects: "
        f"{found['figure']})"
    )
    for method, scores in found.get("vs_truth", {}).items():
        if isinstance(scores, dict):
            print(
                f"  {method}: {scores['flagged']} flagged, precision {scores['precision']:.3f}, recall "
                f"{scores['recall']:.3f}, F1 {scores['f1']:.3f}, AUROC {scores['auroc']:.3f}"
            )


def run_cli(args: Optional[Sequence[str]] = None, **kwargs: Any) -> NLACLI:
    return NLACLI(args, **kwargs)


#: Mistakes in the user's input or environment, reported as one line rather than a traceback.
#: Lightning raises MisconfigurationException for trainer settings it cannot use (``--trainer.accelerator gpu``
#: where there is none, ``--trainer.max_epochs -2``); its message names the setting.
USER_ERRORS = (
    UserError,
    RunDirectoryError,
    WeightsMismatchError,
    FileExistsError,
    FileNotFoundError,
    MisconfigurationException,
)


SIGTERM_MESSAGE = "stopped by SIGTERM; the checkpoints written so far are kept. Resume with --ckpt_path last"


def quiet_known_warnings() -> None:
    """Silence the few messages of the libraries nla uses that tell an nla user nothing and that nla cannot fix
    at their cause, each matched exactly."""
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # LightningCLI itself calls jsonargparse functions that jsonargparse has deprecated.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning\.pytorch\.cli")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.getMessage()).startswith("💡 Tip: For seamless cloud logging")
    )


PACKAGE_DIR = Path(__file__).resolve().parent
_library_format = warnings.formatwarning


def format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: Optional[str] = None
) -> str:
    """nla's own warnings are one line addressed to the user (``nla: warning: ...``); the libraries' keep Python's
    format, which names the file and line they came from."""
    if Path(filename).resolve().is_relative_to(PACKAGE_DIR):
        return f"nla: warning: {message}\n"
    return _library_format(message, category, filename, lineno, line)


def main(args: Optional[Sequence[str]] = None) -> None:
    quiet_known_warnings()
    warnings.formatwarning = format_warning
    terminated: list[int] = []

    def on_sigterm(number: int, frame: Any) -> None:
        terminated.append(number)
        if signal.getsignal(signal.SIGTERM) is on_sigterm:  # Lightning is not handling it (not training): stop now
            raise SIGTERMException()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        run_cli(args)
    except USER_ERRORS as error:
        _fail(error)
    except ArgumentError as error:
        _fail(parse_error_line(str(error), sys.argv[1:] if args is None else args), code=2)
    except SIGTERMException:
        _fail(SIGTERM_MESSAGE, code=143)
    except RuntimeError as error:
        if terminated and "DataLoader worker" in str(error):  # the workers got the same SIGTERM first
            _fail(SIGTERM_MESSAGE, code=143)
        _fail_if_users(error)
        raise
    except ValueError as error:  # jsonargparse wraps what a class raised while it instantiated it
        _fail_if_users(error)
        raise
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            where = f" writing {error.filename}" if error.filename else ""
            _fail(f"{error.strerror}{where}; the files written before are kept")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def default_precision(accelerator: Any) -> str:
    """``precision: null``: bf16 mixed precision where a CUDA GPU will train, full precision on a CPU."""
    on_gpu = torch.cuda.is_available() and accelerator not in ("cpu",)
    return "bf16-mixed" if on_gpu else "32-true"


def needs_model_and_data(command: str) -> str:
    return (
        f"nla {command} needs a model and its data: pass --ckpt_path (a checkpoint of nla fit), "
        "or --data with a dataset"
    )


TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def parse_error_line(message: str, args: Sequence[str] = ()) -> str:
    """jsonargparse's report of an option it could not parse (for ``--data``, a page on each Union subtype) as one
    line: the option, what it expects and what it got; an option no class takes, with the ``--config`` file and
    line that set it (``args``, the command line, names the files)."""
    if message.startswith('expected "subcommand"'):
        return "nla needs a command, e.g. nla fit; `nla --help` lists them"
    unknown = _unknown_option(message)
    if unknown:
        key, owner = unknown
        klass = _option_class(key, owner)
        accepted, typed = _option_names(klass), key.rsplit(".", 1)[-1]
        if (klass or owner) and typed not in accepted:  # else the parser refused it for another reason
            where = _config_line(args, key)
            close = difflib.get_close_matches(typed, accepted, n=1)
            return (
                f"{where + ': ' if where else '--'}{key} is not an option of "
                f"{owner or (klass.__qualname__ if klass else '')}" + (f" (did you mean {close[0]}?)" if close else "")
            )
    missing = re.search(r"arguments are required: ([\w.\-, ]+)", message)
    if missing:
        names = [name.strip().split(".", 1) for name in missing.group(1).split(",")]
        command = names[0][0]
        if command in EVALUATION_COMMANDS and ["data"] in [name[1:] for name in names]:
            return needs_model_and_data(command)
        given = [name[-1] for name in names if name[-1] != "fit_args"]  # nla experiment's optional remainder
        return f"nla {command} needs {', '.join(given)}; `nla {command} --help` describes it"
    raw = [line for line in message.strip().splitlines() if line.strip()]
    found = [k for k, line in enumerate(raw) if line.strip().startswith('Parser key "')]
    if not found:
        return " ".join(line.strip() for line in raw)
    option = "--" + ".".join(dict.fromkeys(re.findall(r'Parser key "([^"]+)":', message)))
    first, *rest = raw[found[-1]].strip().split(":", 1)
    details: list[str] = [rest[0].strip()] if rest and rest[0].strip() else []
    indent = None
    for line in raw[found[-1] + 1 :]:  # the innermost report, down to where an outer one goes on
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        details.append(line.strip().removeprefix("- "))
    expected, got = [], None
    for detail in details:
        if detail.startswith("Expected "):
            what, _, value = detail.removeprefix("Expected ").partition(". Got value: ")
            got = got or value or None
            what = re.sub(r"^a typing\.Literal\[(.*)\]$", r"one of \1", what)
            what = re.sub(r"^a <class '(\w+)'>$", lambda m: TYPE_WORDS.get(m.group(1), "a " + m.group(1)), what)
            expected.append("null" if what == "a NoneType" else what)
        elif detail.startswith("Given value: "):
            got = got or detail.removeprefix("Given value: ")
    if not expected:
        return f"{option}: {details[0] if details else first}"
    expected.sort(key=lambda what: what == "null")
    return f"{option}: expected {' or '.join(expected)}" + (f"; got {got}" if got is not None else "")


def _unknown_option(message: str) -> Optional[tuple[str, Optional[str]]]:
    """The dotted key of an option jsonargparse refused as unknown, e.g. ``data.batchsize``, and the class path of
    the class that refused it (None for a group of the command, such as ``model``)."""
    command = re.search(r"Subcommand '[\w-]+' does not accept option '([\w.]+)'", message)
    command = command or re.match(r"unrecognized arguments: --([\w.]+)", message)
    if command:
        return command.group(1), None
    group = re.match(r'Parser key "([\w.]+)":', message.strip())
    refused = re.search(r"Problem with given class_path '([\w.]+)':\s+Option '(\w+)' is not accepted", message)
    if group and refused:
        return f"{group.group(1)}.{refused.group(2)}", refused.group(1)
    return None


#: The class behind each group of a command's options.
GROUP_CLASSES = {"model": "nla.module.NLAModule", "trainer": "lightning.pytorch.Trainer"}


def _option_class(key: str, owner: Optional[str]) -> Optional[type]:
    """The class that would take ``key``: ``owner`` (a class path), or the class found by following the
    parameters' types down from a group of the command (``model.criterion.lam``: NLAModule's ``criterion``)."""
    parts = [part for part in key.split(".")[:-1] if part != "init_args"]
    module, _, name = (owner or GROUP_CLASSES.get(parts[0] if parts else "", "")).rpartition(".")
    try:
        klass: Any = getattr(importlib.import_module(module), name)
        for part in [] if owner else parts[1:]:
            klass = typing.get_type_hints(klass.__init__)[part]
    except (ImportError, AttributeError, KeyError, NameError, TypeError, ValueError):
        return None
    return klass if inspect.isclass(klass) else None


def _option_names(klass: Optional[type]) -> list[str]:
    """The keyword arguments that ``klass`` takes, its bases' included."""
    names: dict[str, None] = {}
    for base in klass.__mro__[:-1] if klass else ():
        try:
            parameters = inspect.signature(base).parameters.values()
        except (TypeError, ValueError):
            continue
        names.update(dict.fromkeys(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)))
    names.pop("self", None)
    return list(names)


def _config_line(args: Sequence[str], key: str) -> Optional[str]:
    """``file:line`` of the first ``--config`` file in ``args`` that sets ``key`` (``init_args`` levels aside)."""
    wanted = [part for part in key.split(".") if part != "init_args"]
    for path in _config_files(args):
        try:
            node: Any = yaml.compose(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        mark = None
        for depth, part in enumerate(wanted):
            found = _yaml_child(node, part, through_init_args=depth > 0)
            if found is None:
                break
            mark, node = found[0].start_mark, found[1]
        else:
            if mark is not None:
                return f"{path}:{mark.line + 1}"
    return None


def _yaml_child(node: Any, key: str, through_init_args: bool) -> Optional[tuple[Any, Any]]:
    """The (key, value) nodes of ``key`` in a YAML mapping node, looking inside an ``init_args`` level if allowed."""
    while isinstance(node, yaml.MappingNode):
        pairs = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        if key in pairs:
            return pairs[key]
        if not (through_init_args and "init_args" in pairs):
            return None
        node = pairs["init_args"][1]
    return None


def _fail_if_users(error: BaseException) -> None:
    """Report the user's mistake at the root of ``error``, if there is one, as one line."""
    seen: set[int] = set()
    cause: Optional[BaseException] = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, USER_ERRORS):
            _fail(cause)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__


def _fail(error: Any, code: int = 1) -> None:
    lines = str(error).strip().splitlines()
    print(f"nla: error: {lines[-1] if lines else type(error).__name__}", file=sys.stderr)
    raise SystemExit(code) from None


if __name__ == "__main__":
    main()
