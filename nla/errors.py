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


def read_yaml(path: Path) -> Any:
    """A YAML file the user wrote; one that is not YAML is a :class:`UserError` naming it and the line."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
