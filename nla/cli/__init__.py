"""The ``nla`` command: LightningCLI's ``fit``, ``validate``, ``test`` and ``predict``, and nla's ``label-issues``,
``experiment``, ``export`` and ``compare``.

:func:`main` reads the command's name and imports only that command's module, so that ``nla --help`` and
``nla compare`` answer without loading PyTorch. Each command's module has a ``main(argv)``:

- :mod:`nla.cli.lightning`: the Lightning commands and ``label-issues`` (the parser, nla's defaults, run directories,
  checkpoints); :mod:`nla.cli.label_issues` reports what ``label-issues`` found;
- :mod:`nla.cli.experiment`, :mod:`nla.cli.export`, :mod:`nla.cli.compare`: nla's other commands;
- :mod:`nla.cli.messages`: every mistake of the user's as one line; :mod:`nla.cli.args`: reading a command line.
"""

from __future__ import annotations

import difflib
import errno
import importlib
import os
import signal
import sys
import warnings
from argparse import ArgumentError
from collections.abc import Sequence
from typing import Any, NamedTuple, NoReturn, Optional

from nla.cli.help_cache import cached, print_help
from nla.cli.messages import (
    SIGTERM_MESSAGE,
    Terminated,
    fail,
    fail_if_users,
    format_warning,
    is_lightning_sigterm,
    parse_error_line,
    quiet_known_warnings,
    user_errors,
)


class Command(NamedTuple):
    module: str  # imported only when the command runs
    help: str


COMMANDS = {
    "fit": Command(
        "nla.cli.lightning",
        "Train a model (the paper's recipe unless told otherwise); resume a run with --ckpt_path last",
    ),
    "validate": Command("nla.cli.lightning", "Evaluate a checkpoint on the validation split of its data"),
    "test": Command(
        "nla.cli.lightning",
        "Evaluate a checkpoint on a test split, of its own dataset or of another (classes matched by name)",
    ),
    "predict": Command(
        "nla.cli.lightning", "Predict the expression in every image of a folder from a checkpoint, into a CSV"
    ),
    "label-issues": Command(
        "nla.cli.lightning",
        "Rank the training images whose labels are probably wrong, by the NAW weight of a checkpoint",
    ),
    "experiment": Command(
        "nla.cli.experiment", "Run a grid of methods x protocols x seeds (the paper's tables) and write its tables"
    ),
    "export": Command(
        "nla.cli.export",
        "Write a trained checkpoint as ONNX, TorchScript or a torch.export program, with its preprocessing",
    ),
    "compare": Command(
        "nla.cli.compare",
        "Compare runs: last, best and mean of the last k epochs, overall, mean and per-class accuracy",
    ),
}


def usage() -> str:
    """``nla --help``: the commands, one line each."""
    width = max(len(name) for name in COMMANDS) + 2
    lines = [
        "usage: nla <command> [options]",
        "",
        "nla: facial expression recognition with NLA (AAAI 2025) and its baselines.",
        "`nla <command> --help` describes each command.",
        "",
        "commands:",
        *(f"    {name:<{width}}{command.help}" for name, command in COMMANDS.items()),
    ]
    return "\n".join(lines)


def run_cli(args: Optional[Sequence[str]] = None, **kwargs: Any) -> Any:
    """The Lightning commands as a :class:`nla.cli.lightning.NLACLI`, for tests and notebooks (no one-line errors)."""
    from nla.cli.lightning import NLACLI

    return NLACLI(args, **kwargs)


def main(args: Optional[Sequence[str]] = None) -> None:
    """``nla <command> ...``: a user's mistake is one line; output cut short by its reader (``nla --help | head -1``)
    ends the command quietly, as a closed pipe ends any command line tool."""
    try:
        try:
            run_command(args)
        finally:
            sys.stdout.flush()
    except BrokenPipeError:  # the reader went away: no traceback, and no second one when Python flushes at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None  # 128 + SIGPIPE, as a shell reports it


def run_command(args: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    quiet_known_warnings()
    warnings.formatwarning = format_warning
    name = argv[0] if argv else None
    if name in ("-h", "--help"):
        print(usage())
        raise SystemExit(0)
    if name is None:
        fail("nla needs a command, e.g. nla fit; `nla --help` lists them", code=2)
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        fail(
            f"{name!r} is not a command of nla" + (f" (did you mean {close[0]}?)" if close else "") + "; `nla --help` "
            "lists them",
            code=2,
        )
    terminated: list[int] = []

    def on_sigterm(number: int, frame: Any) -> None:
        terminated.append(number)
        if signal.getsignal(signal.SIGTERM) is on_sigterm:  # Lightning is not handling it (not training): stop now
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        help_file = cached(argv) if COMMANDS[name].module == "nla.cli.lightning" else None
        if help_file is not None:  # LightningCLI's help needs Lightning: render it once, then print it from a file
            print_help(help_file, lambda: importlib.import_module(COMMANDS[name].module).main(argv))
        importlib.import_module(COMMANDS[name].module).main(argv)
    except ArgumentError as error:
        fail(parse_error_line(str(error), argv), code=2)
    except Terminated:
        stop_on_sigterm()
    except SystemExit as error:
        if is_lightning_sigterm(error):
            stop_on_sigterm()
        raise
    except Exception as error:
        if isinstance(error, user_errors()):
            fail(error)
        if isinstance(error, RuntimeError) and terminated and "DataLoader worker" in str(error):
            stop_on_sigterm()  # the workers got the same SIGTERM first
        if isinstance(error, (RuntimeError, ValueError)):  # jsonargparse wraps what a class raised while it was made
            fail_if_users(error)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            where = f" writing {error.filename}" if error.filename else ""
            fail(f"{error.strerror}{where}; the files written before are kept")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_on_sigterm() -> NoReturn:
    """Exit with SIGTERM's one line and status. The DataLoader workers got the same SIGTERM: torch's SIGCHLD handler
    would raise on their deaths while the process exits (a traceback printed from an exit finalizer), so it goes."""
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    fail(SIGTERM_MESSAGE, code=143)


__all__ = ["COMMANDS", "format_warning", "main", "run_cli", "usage"]
