"""The Lightning commands, ``fit``, ``validate``, ``test``, ``predict``, and ``label-issues``: LightningCLI with nla's
defaults, run directories and checkpoints.

Every command starts from nla's defaults (``nla/defaults.yaml``: the paper's trainer, the callbacks, offline W&B)
beneath any ``--config``. Run directories follow :mod:`nla.rundir`: a fit writes into ``trainer.default_root_dir``
(``runs/<dataset>`` unless given) and holds a lock on it; resuming (``--ckpt_path last``) is the only way back into a
directory that holds a run, and may change only the settings that can change mid-run. ``validate``, ``test``,
``predict`` and ``label-issues`` take the model, its classes and its preprocessing from ``--ckpt_path`` and write into
a fresh sub-folder of the checkpoint's run.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from nla.backbones import WeightsMismatchError, load_trusted
from nla.backbones.starts import restoring
from nla.callbacks import RunConfigSaver
from nla.cli import COMMANDS
from nla.cli import args as command_line
from nla.cli.args import config_files, names_data, names_logger, nested_nulls, yaml_number
from nla.cli.callbacks import settle_callbacks
from nla.cli.evaluation import EvaluatedRun
from nla.cli.fit_run import prepare_fit, record_protocol_files
from nla.cli.messages import EVALUATION_COMMANDS, needs_model_and_data, null_group
from nla.cli.trainer import NLATrainer
from nla.data.base import FERDataModule
from nla.data.upgrade import upgrade_settings
from nla.errors import UserError, check_seed, read_yaml
from nla.loggers import without_wandb
from nla.module import NLAModule
from nla.rundir import RunLock, default_run_dir, fresh_folder, name_loggers, resolve_checkpoint
from nla.settings import CLASS_PATH_KEY, LIGHTNING_CLI_KEYS, expand_home, import_class, same
from nla.step_graph import trainer_conflicts

DEFAULTS = Path(__file__).resolve().parents[1] / "defaults.yaml"


#: Set by the first process of a distributed evaluation, so that the others write into the same folder.
OUTPUT_ENV = "NLA_COMMAND_DIR"


def launched_process() -> bool:
    """Whether this is a second (or later) process of a distributed run; the first one makes the decisions."""
    return any(int(os.environ.get(key, 0) or 0) for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


class NLACLI(LightningCLI):
    """LightningCLI with nla's defaults, run directories, checkpoint handling and ``label-issues``."""

    def __init__(self, args: Optional[Sequence[str]] = None, **kwargs: Any) -> None:
        self._given_args: list[str] = []
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
        for command in self.subcommands():
            description = COMMANDS[command.replace("_", "-")].help
            parser_kwargs[command] = {
                "prog": f"nla {command_name(command)}",
                "default_config_files": [str(DEFAULTS)],
                "exit_on_error": False,
                "description": description,
            }
        kwargs.setdefault("parser_kwargs", parser_kwargs)
        try:
            super().__init__(
                NLAModule,
                FERDataModule,
                subclass_mode_data=True,
                save_config_callback=RunConfigSaver,
                trainer_class=NLATrainer,
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

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's commands and ``label_issues`` (:meth:`nla.cli.trainer.NLATrainer.label_issues`)."""
        return {**LightningCLI.subcommands(), "label_issues": {"model", "datamodule"}}

    def instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # A model from a checkpoint takes its weights from it: its start (a weights file, dlib's network, timm's
        # cache) is recorded, not read; it may be gone, or not installed here.
        with restoring() if config.get("ckpt_path") else contextlib.nullcontext():
            self.config_init = self.parser.instantiate(self.config)
        chosen = self.config_init[self.subcommand] if self.subcommand else self.config_init
        self.datamodule, self.model = chosen.get("data"), chosen["model"]
        self.trainer = self.instantiate_trainer()

    # --- checkpoints -----------------------------------------------------------------------------------

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """An evaluation command given a checkpoint and no dataset uses the dataset the checkpoint was trained on."""
        given = (
            list(sys.argv[1:] if args is None else args) if args is None or isinstance(args, (list, tuple)) else None
        )
        if given and any(yaml_number(arg) != arg for arg in given):
            args = given = [yaml_number(arg) for arg in given]
        if given and nested_nulls(given) != given:
            args = given = nested_nulls(given)
        for path in config_files(given or []):
            if path.is_file():
                read_yaml(path)  # jsonargparse's message names neither the file nor, often, the line
        if given and given[0] in EVALUATION_COMMANDS and not names_data(given):
            ckpt = expand_home(command_line.option(given, "--ckpt_path"))
            if ckpt:
                root = Path(command_line.option(given, "--trainer.default_root_dir") or ".")
                checkpoint = self._load_checkpoint(resolve_checkpoint(ckpt, root))
                class_path = (checkpoint.get("datamodule_hyper_parameters") or {}).get(CLASS_PATH_KEY)
                if class_path:
                    args = [given[0], "--data", class_path, *given[1:]]
                    self._data_from_run = True
        self._given_args = list(given or [])
        if given is not None:  # Lightning's own method warns when it gets arguments and sys.argv has some too
            self.config = parser.parse_args(args if args is not None else given)
        else:
            super().parse_arguments(parser, args)
        self.config = expand_home(self.config)
        subcommand = self.config.get("subcommand")
        null = null_group(self.config[subcommand], self._given_args) if subcommand else None
        if null:
            raise UserError(null)
        seed = self.config[subcommand].get("seed_everything") if subcommand else None
        if isinstance(seed, int) and not isinstance(seed, bool):
            check_seed(seed, "--seed_everything")
        self._model_from_checkpoint()

    def _load_checkpoint(self, path: Path) -> dict[str, Any]:
        if self._checkpoint_path != path:
            checkpoint = load_trusted(path, what="checkpoint")
            if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
                raise WeightsMismatchError(f"{path} is not a checkpoint written by nla fit (it has no 'state_dict')")
            if not isinstance(checkpoint.get("hyper_parameters"), dict):  # the model it holds cannot be rebuilt
                raise WeightsMismatchError(
                    f"{path} is not a checkpoint written by nla fit (it records no model settings, "
                    "'hyper_parameters'); --model.pretrained_weights starts a fit from a file of weights"
                )
            if checkpoint.get("datamodule_hyper_parameters"):  # an nla 0.2 checkpoint's flat settings, in groups
                checkpoint["datamodule_hyper_parameters"] = upgrade_settings(checkpoint["datamodule_hyper_parameters"])
            self._checkpoint, self._checkpoint_path = checkpoint, path
        assert self._checkpoint is not None
        return self._checkpoint

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's own reads the model settings of any ``--ckpt_path`` over the command line's, a resumed fit's
        too; nla reads its checkpoints itself (:meth:`_model_from_checkpoint`, :func:`nla.cli.fit_run.prepare_fit`).
        The one private method of LightningCLI nla replaces (tests/cli/test_seams.py fails if Lightning drops it)."""

    def _model_from_checkpoint(self) -> None:
        """Evaluation commands take the model (its classes and architecture) from ``--ckpt_path``; a fit's
        checkpoint is checked in :meth:`before_instantiate_classes` instead."""
        subcommand = self.config.get("subcommand")
        if subcommand not in EVALUATION_COMMANDS or not self.config[subcommand].get("ckpt_path"):
            return
        config = self.config[subcommand]
        path = resolve_checkpoint(config.ckpt_path, self._run_root(config))
        config.ckpt_path = str(path)
        hparams = dict(self._load_checkpoint(path).get("hyper_parameters") or {})
        for key in LIGHTNING_CLI_KEYS:
            hparams.pop(key, None)
        for key in command_line.given_under(self._given_args, "--model."):  # replaced by the checkpoint's: said
            if key in hparams and not same(config.model.get(key), hparams[key]):
                raise UserError(
                    f"--model.{key} {config.model.get(key)!r}: nla {command_name(subcommand)} runs the model "
                    f"{path.name} holds ({key} {hparams[key]!r}); leave --model.* out"
                )
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def before_fit(self) -> None:
        if self._resume_note:
            print(self._resume_note, file=sys.stderr)

    def before_predict(self) -> None:
        """The rows go to predictions.csv batch by batch; Lightning keeping every batch's output too would make memory
        grow with the length of a video. ``--return_predictions true`` keeps them."""
        config = self.config_init[self.subcommand]
        if config.get("return_predictions") is None:
            config["return_predictions"] = False

    # --- run directories ----------------------------------------------------------------------------

    def _run_root(self, config: Namespace) -> Path:
        return default_run_dir(config, FERDataModule)

    def before_instantiate_classes(self) -> None:
        subcommand = self.subcommand
        if subcommand is None:
            return
        config = self.config[subcommand]
        trainer = config.trainer
        if trainer.precision is None:
            trainer.precision = default_precision(trainer.accelerator)
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True  # checkpoints are read without unpickling arbitrary objects
        if trainer.accelerator in ("gpu", "cuda") and not (
            torch.cuda.is_available() or torch.backends.mps.is_available()
        ):
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a build without CUDA"
            raise UserError(
                f"--trainer.accelerator {trainer.accelerator}: PyTorch finds no GPU on this machine (torch "
                f"{torch.__version__}, {build}); leave it at auto to run on the CPU"
            )
        root = self._run_root(config)
        existing = next((folder for folder in (root, *root.parents) if folder.exists()), None)
        if existing is not None and not existing.is_dir():  # mkdir would say "[Errno 17] File exists"
            raise UserError(f"--trainer.default_root_dir {str(root)!r}: {str(existing)!r} is a file, not a folder")
        record_protocol_files(config)
        note = without_wandb(trainer, names_logger(self._given_args))
        if note and not launched_process():
            print(note, file=sys.stderr)
        note = settle_callbacks(trainer)
        if note and not launched_process():
            print(f"nla: {note}", file=sys.stderr)
        if subcommand == "fit" and config.model.get("step_graph"):  # before any data is read
            clip, accumulate = trainer.get("gradient_clip_val"), trainer.get("accumulate_grad_batches") or 1
            on_cuda = torch.cuda.is_available() and trainer.accelerator in ("auto", "gpu", "cuda")
            # Lightning runs 16-mixed as bf16-mixed on a CPU; only CUDA's float16 needs the scaler
            conflict = trainer_conflicts(clip, accumulate, trainer.precision if on_cuda else None)
            if conflict:
                raise UserError(conflict)
        if subcommand == "fit":
            self._lock, self._resume_note = prepare_fit(config, root, self._load_checkpoint, not launched_process())
            self._checkpoint = self._checkpoint_path = None  # checked; Lightning reads it again to resume
        else:
            data = config.get("data")
            chosen = data.get("class_path") if isinstance(data, Namespace) else None
            if self._checkpoint is None and (data is None or (chosen and import_class(chosen) is FERDataModule)):
                raise UserError(needs_model_and_data(command_name(subcommand)))  # before a folder is made for it
            if self._checkpoint is not None:  # the run's data, input and logger, checked before a folder is made
                assert self._checkpoint_path is not None
                evaluated = EvaluatedRun(self._checkpoint, self._checkpoint_path, self._data_from_run, self._given_args)
                self.config = evaluated.settle(self.parser, self.config, subcommand, command_name(subcommand))
                config = self.config[subcommand]
            if launched_process():
                output = Path(os.environ.get(OUTPUT_ENV) or root)
            else:
                output = self._output = fresh_folder(root, command_name(subcommand))
                os.environ[OUTPUT_ENV] = str(output)
                MADE_FOLDERS.append(output)
            config.trainer.default_root_dir = str(output)
        run = root if subcommand == "fit" else Path(config.trainer.default_root_dir)
        name_loggers(config.trainer, run, tuple(command_name(c) for c in EVALUATION_COMMANDS))


def default_precision(accelerator: Any) -> str:
    """``precision: null``: bf16 mixed precision where a CUDA GPU will train, full precision on a CPU."""
    on_gpu = torch.cuda.is_available() and accelerator not in ("cpu",)
    return "bf16-mixed" if on_gpu else "32-true"


def command_name(subcommand: str) -> str:
    """The command a user types for a Trainer method: ``label-issues`` for ``label_issues``."""
    return subcommand.replace("_", "-")


def main(argv: Sequence[str]) -> None:
    """``nla <command> ...`` for the Lightning commands; :func:`nla.cli.main` turns its errors into one line."""
    argv = list(argv)
    if argv and argv[0] == "label-issues":  # the command is NLATrainer.label_issues
        argv[0] = "label_issues"
    try:
        NLACLI(argv)
        MADE_FOLDERS.clear()  # what a command that succeeded made stays
    except BaseException as error:
        remove_unused_folders()
        if not isinstance(error, Exception):
            raise
        refused = lightning_refusal(error)
        if refused is None:
            raise
        raise UserError(refused) from None


#: The folders this process made for an evaluation command's outputs (test, predict, ...).
MADE_FOLDERS: list[Path] = []
#: What such a folder holds before the command has produced anything: its config and an offline logger's run.
SCAFFOLDING = ("config.yaml", "wandb", ".nla.lock")


def remove_unused_folders() -> None:
    """A command that failed before it wrote a result leaves no folder that looks like one (and takes no number
    from the next run): a folder it made that holds its config and logger files only is removed."""
    while MADE_FOLDERS:
        folder = MADE_FOLDERS.pop()
        files = [path.relative_to(folder) for path in folder.rglob("*") if path.is_file()] if folder.is_dir() else []
        if folder.is_dir() and all(path.parts[0] in SCAFFOLDING for path in files):
            wandb = sys.modules.get("wandb")
            if wandb is not None and getattr(wandb, "run", None) is not None:  # closed now, not at exit into it
                with contextlib.suppress(Exception), contextlib.redirect_stderr(io.StringIO()):
                    wandb.finish(exit_code=1)
            shutil.rmtree(folder, ignore_errors=True)


def lightning_refusal(error: BaseException) -> Optional[str]:
    """The message of Lightning's MisconfigurationException at the root of ``error``: a trainer setting it cannot use
    (``--trainer.max_epochs -2``), named in its message; ``None`` when there is none."""
    seen: set[int] = set()
    cause: Optional[BaseException] = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, MisconfigurationException):
            return str(cause)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None
