"""An experiment file: a grid of methods x protocols x seeds, each a stack of config overlays, checked on loading
(every key's type, every overlay's existence) so that a mistake is one line before any run."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nla.errors import UserError, read_yaml


class ExperimentError(UserError, ValueError):
    """A malformed experiment file."""


#: The folder of a grid where a cluster launcher keeps its jobs' files (no protocol may be named so).
CLUSTER_FOLDER = "cluster"


@dataclass
class Experiment:
    name: str
    base: list[str]
    methods: dict[str, list[str]]
    protocols: dict[str, list[str]] = field(default_factory=lambda: {"clean": []})
    seeds: list[int] = field(default_factory=lambda: [0])
    output_dir: Optional[str] = None
    args: list[str] = field(default_factory=list)
    paper: dict[str, dict[str, list[Optional[float]]]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Experiment:
        path = Path(path)
        if not path.is_file():
            raise ExperimentError(f"experiment file {str(path)!r} does not exist")
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ExperimentError(f"{path}: expected a mapping of name, base, methods, ...; got {type(raw).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ExperimentError(f"{path}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        for key in ("name", "base", "methods"):
            if key not in raw:
                raise ExperimentError(f"{path}: missing key {key!r}")
        for key in ("methods", "protocols"):  # `clean:` with nothing after it is an empty list of overlays
            if isinstance(raw.get(key), dict):
                raw[key] = {label: [] if overlays is None else overlays for label, overlays in raw[key].items()}
        hints = typing.get_type_hints(cls)
        for key, value in raw.items():
            if not _conforms(value, hints[key]):
                shown = str(hints[key]).replace("typing.", "")
                raise ExperimentError(f"{path}: {key} is {value!r}; expected {shown}")
        experiment = cls(**raw)
        if experiment.name in ("", ".", "..") or re.search(r"[/\\]", experiment.name):
            raise ExperimentError(
                f"{path}: name {experiment.name!r} is the grid's folder under runs/experiments; give a name without "
                "/ or \\, not . or .."
            )
        for key in ("methods", "protocols"):
            if not getattr(experiment, key):
                raise ExperimentError(f"{path}: {key} is empty; a grid needs at least one")
        for label, overlays in [("base", experiment.base), *experiment.methods.items(), *experiment.protocols.items()]:
            for overlay in overlays or []:
                if Path(overlay).is_dir():
                    raise ExperimentError(f"{path}: {label!r} names {overlay!r}, a folder; expected a config file")
                if not Path(overlay).is_file():
                    raise ExperimentError(f"{path}: {label!r} names config {overlay!r}, which does not exist")
        experiment.check_cells(str(path))
        experiment.check_paper(str(path))
        return experiment

    def check_paper(self, source: str) -> None:
        """The published numbers name a method and a protocol of the grid and hold [overall, mean]: a misspelt
        name would leave its numbers out of the table without a word."""
        for method, by_protocol in self.paper.items():
            if method not in self.methods:
                raise ExperimentError(f"{source}: paper names method {method!r}; the grid's are {list(self.methods)}")
            for protocol, published in by_protocol.items():
                if protocol not in self.protocols:
                    raise ExperimentError(
                        f"{source}: paper[{method!r}] names protocol {protocol!r}; the grid's are "
                        f"{list(self.protocols)}"
                    )
                if len(published) != 2:
                    raise ExperimentError(
                        f"{source}: paper[{method!r}][{protocol!r}] is {published}; expected [overall, mean] in %"
                        " (null for one not published)"
                    )

    def check_cells(self, source: str) -> None:
        """Every cell in a folder of its own: no seed listed twice, no two names that share a folder (``CE`` and
        ``ce``), so that no run is counted twice or under another's name."""
        repeated = sorted({seed for seed in self.seeds if self.seeds.count(seed) > 1})
        if repeated:
            raise ExperimentError(f"{source}: seeds {self.seeds} list {repeated} more than once; each seed runs once")
        for kind, labels in (("methods", self.methods), ("protocols", self.protocols)):
            folders: dict[str, str] = {}
            for label in labels:
                if not slug(label).strip("."):
                    raise ExperimentError(f"{source}: {kind} {label!r} names no folder; use letters or digits in it")
                if kind == "protocols" and slug(label) == CLUSTER_FOLDER:
                    raise ExperimentError(f"{source}: protocol {label!r} would share the cluster's folder; rename it")
                other = folders.setdefault(slug(label), label)
                if other != label:
                    raise ExperimentError(
                        f"{source}: {kind} {other!r} and {label!r} would share the folder {slug(label)!r}; rename one"
                    )

    @property
    def root(self) -> Path:
        return Path(self.output_dir or f"runs/experiments/{self.name}")

    def cells(self) -> list[tuple[str, str, int]]:
        return [(p, m, s) for p in self.protocols for m in self.methods for s in self.seeds]

    def run_dir(self, protocol: str, method: str, seed: int) -> Path:
        return self.root / slug(protocol) / slug(method) / f"seed{seed}"


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a value read from YAML has the type ``hint`` (str, int, float, None, list, dict, Optional)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_conforms(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_conforms(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label.replace("+", "plus").replace("%", "pct")).strip("-").lower()
