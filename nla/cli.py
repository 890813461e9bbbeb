"""The ``nla`` command: LightningCLI's ``fit``, ``validate``, ``test`` and ``predict``, plus ``experiment`` and ``export``.

Everything a run writes lives in one run directory, ``trainer.default_root_dir``: ``config.yaml``,
``checkpoints/``, ``wandb/``, ``summary.json`` and the figures. A fit refuses a directory that
already holds a run unless it resumes it with ``--ckpt_path last``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from nla.backbone import WeightsMismatchError
from nla.callbacks import RunConfigSaver
from nla.data.datamodule import FERDataModule
from nla.data.samples import DataError
from nla.module import NLAModule, NonFiniteLossError


class RunDirectoryError(RuntimeError):
    """The run directory already holds a run that this command would overwrite."""


#: Errors that are the user's input, reported as one line rather than a traceback.
USER_ERRORS = (DataError, NonFiniteLossError, WeightsMismatchError, RunDirectoryError, FileExistsError, FileNotFoundError)


def _class_name(entry: Any) -> str:
    return str(getattr(entry, "class_path", "") or "")


class NLACLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The data decides the classes; the model follows.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        root = Path(trainer.default_root_dir or "runs/default")
        trainer.default_root_dir = str(root)
        if trainer.precision is None:
            # bf16 mixed precision is the default on a GPU; the CPU trains in fp32.
            on_gpu = torch.cuda.is_available() and trainer.accelerator not in ("cpu",)
            trainer.precision = "bf16-mixed" if on_gpu else "32-true"
        for callback in trainer.callbacks or []:
            if _class_name(callback).endswith("ModelCheckpoint") and callback.init_args.dirpath is None:
                callback.init_args.dirpath = str(root / "checkpoints")
        loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        for logger in loggers:
            if _class_name(logger).endswith(("WandbLogger", "CSVLogger", "TensorBoardLogger")):
                if logger.init_args.get("save_dir") in (None, ".", "./"):
                    logger.init_args.save_dir = str(root)

    def before_fit(self) -> None:
        config = self.config[self.subcommand]
        launched = any(int(os.environ.get(key, 0)) for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))
        if config.get("ckpt_path") or launched:  # the other processes of a distributed run share the first one's directory
            return
        root = Path(self.trainer.default_root_dir)
        held = [root / "config.yaml", *sorted((root / "checkpoints").glob("*.ckpt"))]
        held = [path for path in held if path.exists()]
        if held:
            raise RunDirectoryError(
                f"run directory {str(root)!r} already holds a run ({held[0].name}); resume it with --ckpt_path last, "
                "or start a new run with another --trainer.default_root_dir"
            )


DESCRIPTION = (
    "nla: facial expression recognition with NLA (AAAI 2025) and its baselines. "
    "Besides the subcommands below: `nla experiment CONFIG` runs a grid of methods x protocols x seeds and writes "
    "the paper's tables, and `nla export --ckpt_path CKPT` writes ONNX, TorchScript or torch.export models."
)


def run_cli(args: Optional[Sequence[str]] = None, **kwargs: Any) -> NLACLI:
    kwargs.setdefault("parser_kwargs", {"prog": "nla", "description": DESCRIPTION})
    return NLACLI(
        NLAModule,
        FERDataModule,
        subclass_mode_data=True,
        save_config_callback=RunConfigSaver,
        args=list(args) if args is not None else None,
        auto_configure_optimizers=False,
        **kwargs,
    )


def main(args: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "experiment":
        from nla.experiment import main as experiment_main

        return experiment_main(argv[1:])
    if argv and argv[0] == "export":
        from nla.export import main as export_main

        return export_main(argv[1:])
    try:
        run_cli(args)
    except USER_ERRORS as error:
        print(f"nla: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except SIGTERMException:
        print("nla: stopped by SIGTERM; the checkpoints written so far are kept. Resume with --ckpt_path last.",
              file=sys.stderr)
        raise SystemExit(143) from None


if __name__ == "__main__":
    main()
