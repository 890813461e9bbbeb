"""Shared fixtures: tiny synthetic datasets in the real layouts, and the real data when it is present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nla.data.synthetic import write_affectnet, write_ferplus, write_image_folder, write_rafdb

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def real_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real {name} data not found at {path} (it is licensed for research and not shipped with nla)")
    return path


@pytest.fixture(autouse=True)
def _cli_argv(monkeypatch):
    """The CLI is driven through its ``args``; pytest's own argv must not look like extra CLI arguments."""
    monkeypatch.setattr("sys.argv", ["nla"])


@pytest.fixture(scope="session")
def rafdb_root(tmp_path_factory) -> Path:
    return write_rafdb(tmp_path_factory.mktemp("rafdb"), train_per_class=6, test_per_class=3, size=24)


@pytest.fixture(scope="session")
def rafdb_folders_root(tmp_path_factory) -> Path:
    return write_rafdb(tmp_path_factory.mktemp("rafdb_folders"), train_per_class=6, test_per_class=3, size=24, layout="folders")


@pytest.fixture(scope="session")
def ferplus_root(tmp_path_factory) -> Path:
    return write_ferplus(tmp_path_factory.mktemp("ferplus"), per_class=3, size=24)


@pytest.fixture(scope="session")
def affectnet_root(tmp_path_factory) -> Path:
    return write_affectnet(tmp_path_factory.mktemp("affectnet"), per_class=3, size=32)


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("folders"), per_class=3, size=24)


# Settings that make a CLI run take seconds on 2 CPU cores.
TINY = [
    "--data.image_size", "32", "--data.batch_size", "8", "--data.num_workers", "0",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--trainer.log_every_n_steps", "1",
]
