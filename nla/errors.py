"""The errors that are the user's input, reported by the ``nla`` command as one line rather than a traceback."""

import math
from pathlib import Path
from typing import Any

import yaml


class UserError(Exception):
    """A mistake in what the user gave nla: a file, a line, a value or a setting, named in the message."""


class DataError(UserError, ValueError):
    """Bad input found while setting up data: one message that names the file, line or value at fault."""


class ConfigError(UserError, ValueError):
    """A setting with a value nla cannot use."""


#: The smallest input side nla trains or exports at.
MIN_IMAGE_SIZE = 16


def check_image_size(size: int, name: str, error: type[UserError] = ConfigError) -> None:
    """An input side below :data:`MIN_IMAGE_SIZE` is an ``error`` naming ``name`` (the option or argument)."""
    if size < MIN_IMAGE_SIZE:
        raise error(f"{name} {size} is too small; give the side of the network input, e.g. 224")


#: The seeds numpy, and so Lightning's ``seed_everything``, accepts.
SEED_RANGE = (0, 2**32 - 1)


def check_seed(seed: int, name: str) -> None:
    """A seed outside :data:`SEED_RANGE` is a :class:`ConfigError` naming ``name`` (the option or key)."""
    low, high = SEED_RANGE
    if not low <= seed <= high:
        raise ConfigError(f"{name} {seed} is outside {low}..{high}, the seeds numpy accepts")


def check_positive_finite(value: float, name: str) -> None:
    """A value that is not a finite number above 0 is a :class:`ConfigError` naming ``name``."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}={value} must be a finite positive number")


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one mapping: YAML keeps the last silently, so the first is lost without a word."""

    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"{key!r} is given twice (first on line {first + 1}); YAML would keep only the last")
        self.line = line


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that gives a key twice."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.setdefault(key, key_node.start_mark.line)
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if seen != key_node.start_mark.line:
                    raise DuplicateKeyError(key, key_node.start_mark.line, seen)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """A YAML file the user wrote; one that is not YAML, or gives a key twice, is a :class:`UserError` naming it and
    the line."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except DuplicateKeyError as error:
        raise UserError(f"{path}:{error.line + 1}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
