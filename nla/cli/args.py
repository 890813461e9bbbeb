"""Reading a command line before it is parsed: an option's value, its --config files, what they choose."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from nla.errors import read_yaml

NON_FINITE = {"nan": ".nan", "inf": ".inf", "+inf": ".inf", "-inf": "-.inf", "infinity": ".inf", "-infinity": "-.inf"}


def yaml_number(arg: str) -> str:
    """``nan`` and ``inf`` as YAML writes them (``.nan``, ``.inf``), so that a value check can name them."""
    name, equals, value = arg.rpartition("=") if arg.startswith("--") else ("", "", arg)
    spelled = NON_FINITE.get(value.lower())
    return f"{name}{equals}{spelled}" if spelled else arg


def option(args: Sequence[str], name: str) -> Optional[str]:
    """The value of ``--name value`` or ``--name=value`` on a command line (the last one given)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def given_under(args: Sequence[str], group: str) -> list[str]:
    """The keys a command line gives under ``group`` (``--model.backbone x`` and ``--model.lr=1`` give ``backbone`` and
    ``lr`` for ``--model.``)."""
    return [arg.split("=", 1)[0].removeprefix(group) for arg in args if arg.startswith(group)]


def config_files(args: Sequence[str]) -> list[Path]:
    """The files a command line gives with ``--config``, ``-c`` or ``--config=``."""
    paths = [
        args[i + 1] if arg in ("--config", "-c") and i + 1 < len(args) else arg.split("=", 1)[1]
        for i, arg in enumerate(args)
        if (arg in ("--config", "-c") and i + 1 < len(args)) or arg.startswith("--config=")
    ]
    return [Path(path) for path in paths]


def names_data(args: Sequence[str]) -> bool:
    """Whether a command line chooses a dataset, itself or in one of its --config files."""
    if any(arg in ("--data",) or arg.startswith("--data=") for arg in args):
        return True
    for path in config_files(args):
        if path.is_file():
            loaded = read_yaml(path) or {}
            if isinstance(loaded, dict) and isinstance(loaded.get("data"), (dict, str)):
                return True
    return False


def names_logger(args: Sequence[str]) -> bool:
    """Whether a command line chooses or configures the logger, itself or in one of its --config files."""
    if any(arg.split("=", 1)[0].startswith("--trainer.logger") for arg in args):
        return True
    for path in config_files(args):
        if path.is_file():
            loaded = read_yaml(path) or {}
            trainer = loaded.get("trainer") if isinstance(loaded, dict) else None
            if isinstance(trainer, dict) and "logger" in trainer:
                return True
    return False


def nested_nulls(args: Sequence[str]) -> list[str]:
    """``--data.<group>.<name> null`` as ``--data.<group> {<name>: null}``, which means the same: jsonargparse refuses
    a null for a field of a dataclass inside the chosen DataModule, and takes it inside a mapping (merged with the
    group's other fields)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name, equals, value = arg.partition("=")
        if not equals and i + 1 < len(args):
            value = args[i + 1]
        parts = name.split(".")
        if name.startswith("--data.") and len(parts) == 3 and value.strip().lower() == "null":
            out += [".".join(parts[:2]), f"{{{parts[2]}: null}}"]
            i += 1 if equals else 2
            continue
        out.append(arg)
        i += 1
    return out
