"""The Lightning commands' ``--help``, kept once rendered.

Rendering ``nla fit --help`` needs LightningCLI's parser, and so Lightning itself, whose import alone takes seconds
longer than PyTorch's. The text depends only on the installed code, so the first rendering is kept in
``$XDG_CACHE_HOME/nla/help`` (``~/.cache/nla/help``), keyed by nla's source files, the libraries' versions, the
command and the terminal's width, and later calls print it without loading PyTorch. Any change to nla or an upgrade
of a library makes a new key; a cache that cannot be written is simply not used.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Optional

HELP_FLAGS = ("-h", "--help")
LIBRARIES = ("torch", "lightning", "jsonargparse", "timm", "torchmetrics", "albumentations")


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nla" / "help"


def key(command: str) -> str:
    """What the help text depends on: nla's files, the libraries' versions, Python, the command, the width."""
    digest = hashlib.sha1(f"{command} {shutil.get_terminal_size().columns} {sys.version}".encode())
    for library in LIBRARIES:
        try:
            digest.update(f"{library}={metadata.version(library)}\n".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{library}=none\n".encode())
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".yaml") and path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(package)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def cached(argv: Sequence[str]) -> Optional[Path]:
    """The cache file for ``nla <command> --help`` (exactly that), or ``None`` for any other command line."""
    if len(argv) != 2 or argv[1] not in HELP_FLAGS:
        return None
    return cache_dir() / f"{argv[0]}-{key(argv[0])}.txt"


def print_help(path: Path, render: Callable[[], None]) -> None:
    """Print the help kept in ``path``; else ``render`` it (it prints and raises SystemExit), keep it, and print."""
    if path.is_file():
        sys.stdout.write(path.read_text())
        raise SystemExit(0)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            render()
    except SystemExit as stopped:
        text = buffer.getvalue()
        if stopped.code in (0, None) and text:
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(f".{os.getpid()}.partial")
                partial.write_text(text)
                os.replace(partial, path)
        sys.stdout.write(text)
        raise
    sys.stdout.write(buffer.getvalue())
