"""Every mistake of the user's as one line: what jsonargparse reports about an option, the errors nla raises for
bad input, and warnings addressed to the user. Nothing here imports PyTorch or Lightning."""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import re
import sys
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, Optional

import yaml

from nla.cli.args import config_files
from nla.errors import UserError
from nla.moved import MOVED_CLASSES

#: The Lightning commands and label-issues, which take a model from a checkpoint and evaluate it (by the names of
#: their Trainer methods, label_issues for label-issues).
EVALUATION_COMMANDS = ("validate", "test", "predict", "label_issues")


class Terminated(SystemExit):
    """SIGTERM arrived while nla, not Lightning's training loop, was in charge."""


def is_lightning_sigterm(error: BaseException) -> bool:
    """Whether ``error`` is Lightning's SIGTERMException (without importing Lightning where it is not loaded)."""
    module = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return module is not None and isinstance(error, module.SIGTERMException)


def user_errors() -> tuple[type[BaseException], ...]:
    """Mistakes in the user's input or environment, reported as one line rather than a traceback: nla's own (one
    base, :class:`nla.errors.UserError`; the Lightning commands turn Lightning's word for a setting it cannot use into
    one), and a file that is missing or would be overwritten, which the OS names."""
    return (UserError, FileExistsError, FileNotFoundError)


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


PACKAGE_DIR = Path(__file__).resolve().parents[1]  # nla/


_library_format = warnings.formatwarning


def format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: Optional[str] = None
) -> str:
    """nla's own warnings are one line addressed to the user (``nla: warning: ...``); the libraries' keep Python's
    format, which names the file and line they came from."""
    if Path(filename).resolve().is_relative_to(PACKAGE_DIR):
        return f"nla: warning: {message}\n"
    return _library_format(message, category, filename, lineno, line)


def needs_model_and_data(command: str) -> str:
    return (
        f"nla {command} needs a model and its data: pass --ckpt_path (a checkpoint of nla fit), "
        "or --data with a dataset"
    )


TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}
TYPE_WORDS |= {"PositiveInt": "a positive integer", "NonNegativeInt": "an integer >= 0"}
TYPE_WORDS |= {"PositiveFloat": "a positive number", "NonNegativeFloat": "a number >= 0"}


def parse_error_line(message: str, args: Sequence[str] = ()) -> str:
    """jsonargparse's report of an option it could not parse (for ``--data``, a page on each Union subtype) as one
    line: the option, what it expects and what it got; an option no class takes, with the ``--config`` file and
    line that set it (``args``, the command line, names the files)."""
    if message.startswith('expected "subcommand"'):
        return "nla needs a command, e.g. nla fit; `nla --help` lists them"
    old_classes = [path for path in re.findall(r"class_path '([\w.]+)'", message) if path in MOVED_CLASSES]
    if old_classes:
        parser_key = re.match(r'\s*Parser key "([\w.]+)"', message)
        where = parser_key.group(1) if parser_key else "config"
        return f"--{where}: {old_classes[0]} is now {MOVED_CLASSES[old_classes[0]]}"
    missing_class = _missing_class(message)
    if missing_class:
        return missing_class
    unknown = _unknown_option(message)
    if unknown:
        key, owner = unknown
        klass = _option_class(key, owner)
        accepted, typed = _option_names(klass), key.rsplit(".", 1)[-1]
        if (klass or owner) and typed not in accepted:  # else the parser refused it for another reason
            where = _config_line(args, key)
            moved = getattr(klass, "moved_options", {}).get(typed)
            if moved:
                group = key.rsplit(".", 1)[0].replace(".init_args", "")
                return f"{where + ': ' if where else '--'}{key} is now {group}.{moved}"
            close = difflib.get_close_matches(typed, accepted, n=1)
            return (
                f"{where + ': ' if where else '--'}{key} is not an option of "
                f"{owner or (klass.__qualname__ if klass else '')}" + (f" (did you mean {close[0]}?)" if close else "")
            )
    missing = re.search(r"arguments are required: ([\w.\-, ]+)", message)
    if missing:
        names = [name.strip().split(".", 1) for name in missing.group(1).split(",")]
        if len(names[0]) == 1 and args:  # a command's own parser names no command: the command line does
            names = [[args[0], *name] for name in names]
        command = names[0][0].replace("_", "-")
        if command.replace("-", "_") in EVALUATION_COMMANDS and ["data"] in [name[1:] for name in names]:
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
    expected, restricted, got = [], [], None
    for detail in details:
        if detail.startswith("Expected "):
            what, _, value = detail.removeprefix("Expected ").partition(". Got value: ")
            got = got or value or None
            what = re.sub(r"^a typing\.Literal\[(.*)\]$", r"one of \1", what)
            what = re.sub(r"^a <class '(\w+)'>$", lambda m: TYPE_WORDS.get(m.group(1), "a " + m.group(1)), what)
            expected.append("null" if what == "a NoneType" else what)
        elif detail.startswith("Given value: "):
            got = got or detail.removeprefix("Given value: ")
        elif detail.startswith("Not of type "):  # a restricted type among a Union's, e.g. PositiveInt
            name = detail.removeprefix("Not of type ").split(":")[0]
            restricted.append(TYPE_WORDS.get(name, "a " + name))
    if not expected:
        regrouped = _regrouped(option)
        if regrouped and details and details[0].startswith("Unable to load config"):
            return f"{option} is a group of settings now: give {regrouped}"
        return f"{option}: {details[0] if details else first}"
    expected = restricted + expected
    expected.sort(key=lambda what: what == "null")
    return f"{option}: expected {' or '.join(expected)}" + (f"; got {got}" if got is not None else "")


def _regrouped(option: str) -> Optional[str]:
    """For a DataModule setting of nla 0.2 whose name is now its group's (``--data.faces``), the option to give."""
    name = option.rsplit(".", 1)[-1]
    if not option.startswith("--data.") or option.count(".") != 1:
        return None
    moved = importlib.import_module("nla.data.upgrade").MOVED_OPTIONS.get(name, "")
    return f"--data.{moved}" if moved.startswith(f"{name}.") else None


def _missing_class(message: str) -> Optional[str]:
    """``--data nla.data.RAFDBDataModul`` (jsonargparse: "Expected a path but ... not accessible or invalid", or
    "Unable to load config"): the class path that names no class, and the closest one that does."""
    group = re.match(r'\s*Parser key "([\w.]+)":', message)
    named = re.search(
        r"Problem with given class_path '([\w.]+)':\s+module '([\w.]+)' has no attribute '(\w+)'", message
    )
    if group and named:
        given, module, name = named.group(1), named.group(2), named.group(3)
    else:
        loading = re.search(r"""Unable to load config ['"]((?:\w+\.)+\w+)['"]""", message)
        if not (group and loading):
            return None
        given = loading.group(1)
        module, _, name = given.rpartition(".")
    try:
        found = importlib.import_module(module)
    except ImportError:
        return f"--{group.group(1)} {given}: there is no module {module}"
    if hasattr(found, name):
        return None
    what = "class" if given == f"{module}.{name}" else "module or class"
    close = difflib.get_close_matches(name, [attr for attr in dir(found) if not attr.startswith("_")], n=1)
    return f"--{group.group(1)} {given}: {module} has no {what} {name}" + (
        f" (did you mean {module}.{close[0]}?)" if close else ""
    )


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
    nested = re.search(r"Problem with given class_path '([\w.]+)':\s+unrecognized arguments: --([\w.]+)", message)
    in_group = re.search(
        r"Problem with given class_path '([\w.]+)':\s+Group '(\w+)' does not accept option '(\w+)'", message
    )
    if group and in_group:  # --data.protocol '{noise_rat: 0.3}', or the same in a config file
        owner, key = in_group.group(1), f"{in_group.group(2)}.{in_group.group(3)}"
    elif group and nested:  # --data.faces.bogus: the class that refused it is the type of the data class's `faces`
        owner, key = nested.group(1), nested.group(2)
    else:
        return None
    module, _, name = owner.rpartition(".")
    try:
        data_class = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    parts = key.split(".")
    for depth in range(len(parts) - 1, -1, -1):  # the deepest class that exists along the key refused it
        try:
            klass = parameter_type(data_class, parts[:depth])
        except (NameError, StopIteration, TypeError, ValueError):
            continue
        shown = ".".join(parts[: depth + 1])
        return f"{group.group(1)}.{shown}", f"{klass.__module__}.{klass.__qualname__}"
    return None


def null_group(config: Any, args: Sequence[str]) -> Optional[str]:
    """``--data.<group> null`` (or ``<group>: null`` in a config file) for a group of a DataModule's settings: one
    line, not a traceback from deep in the parser; a group's defaults are its fields', which null would not say."""
    data = config.get("data") if hasattr(config, "get") else None
    chosen = data.get("class_path") if data is not None and hasattr(data, "get") else None
    if data is None or not chosen:
        return None
    module, _, name = chosen.rpartition(".")
    try:
        groups = getattr(getattr(importlib.import_module(module), name), "groups", {})
    except (ImportError, AttributeError):
        return None
    init_args = data.get("init_args") or {}
    for group, klass in groups.items():
        if group in init_args and init_args[group] is None:
            where = _config_line(args, f"data.{group}")
            return (
                f"{where + ': ' if where else ''}--data.{group} null: {group} is a group of settings "
                f"({klass.__module__}.{klass.__qualname__}); give the ones to change (--data.{group}.<name>), or "
                "leave it out for its defaults"
            )
    return None


def parameter_type(klass: Any, parts: Sequence[str]) -> Any:
    """The type of ``klass``'s parameter ``parts[0]``, of that type's ``parts[1]``, and so on; each where a class or
    one of its bases declares it (a subclass's ``**kwargs`` reach its base's parameters)."""
    for part in parts:
        hints = (typing.get_type_hints(base.__init__) for base in klass.__mro__[:-1])
        klass = next(found[part] for found in hints if part in found)
    return klass


#: The class behind each group of a command's options.
GROUP_CLASSES = {"model": "nla.module.NLAModule", "trainer": "lightning.pytorch.Trainer"}


def _option_class(key: str, owner: Optional[str]) -> Optional[type]:
    """The class that would take ``key``: ``owner`` (a class path), or the class found by following the
    parameters' types down from a group of the command (``model.criterion.lam``: NLAModule's ``criterion``)."""
    parts = [part for part in key.split(".")[:-1] if part != "init_args"]
    module, _, name = (owner or GROUP_CLASSES.get(parts[0] if parts else "", "")).rpartition(".")
    try:
        klass = parameter_type(getattr(importlib.import_module(module), name), [] if owner else parts[1:])
    except (ImportError, AttributeError, NameError, StopIteration, TypeError, ValueError):
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
    for path in config_files(args):
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


def fail_if_users(error: BaseException) -> None:
    """Report the user's mistake at the root of ``error``, if there is one, as one line."""
    seen: set[int] = set()
    cause: Optional[BaseException] = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, user_errors()):
            fail(cause)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__


def fail(error: Any, code: int = 1) -> NoReturn:
    lines = str(error).strip().splitlines()
    print(f"nla: error: {lines[-1] if lines else type(error).__name__}", file=sys.stderr)
    raise SystemExit(code) from None
