"""Shared fixtures: tiny synthetic datasets in the real layouts, the real data when it is present, and the
settings that make a CLI run take seconds on 2 CPU cores."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import yaml

from tests.fakes import write_affectnet, write_ferplus, write_image_folder, write_rafdb

os.environ.setdefault("WANDB_MODE", "offline")
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="nla-test-cache-")  # the help cache, not the user's
os.environ.setdefault("WANDB_SILENT", "true")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (pyproject's ``-n auto``) the workers share the cores: each worker, and every process a test
    starts from it, gets its share of intra-op threads rather than all of them (oversubscribed OpenMP threads spin)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        from nla.data.pipelines import available_cores

        threads = max(1, available_cores() // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CONFIGS = REPO / "configs"

# A CLI run on a synthetic dataset in seconds: timm's 0.4 M-parameter test ResNet, 32 px, no workers, no bar.
TINY = [
    "--model.backbone",
    "test_resnet",
    "--data.preprocessing.image_size",
    "32",
    "--data.batch_size",
    "8",
    "--data.num_workers",
    "0",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]
NO_LOGGER = ["--trainer.logger", "false"]
# The same, and without the figures or a sanity check, for the tests that are not about them (after the dataset config).
QUICK = ["--config", str(REPO / "tests" / "conf" / "tiny.yaml")]


def preset(name: str) -> Any:
    """The criterion of ``configs/presets/<name>.yaml`` (the one source of each preset): nla's defaults with the
    overlay's constants."""
    from nla.criterion import CriterionConfig
    from nla.losses import NAWKernels

    overlay = yaml.safe_load((CONFIGS / "presets" / f"{name}.yaml").read_text())["model"]["criterion"]
    kernels = {k: tuple(v) if isinstance(v, list) else v for k, v in overlay.pop("kernels", {}).items()}
    return CriterionConfig(**overlay, kernels=NAWKernels(**kernels))


def real_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real {name} data not found at {path} (it is licensed for research and not shipped with nla)")
    return path


def fit_args(
    root: Path, run_dir: Path, *extra: str, config: str = "rafdb.yaml", epochs: int = 1, figures: bool = False
) -> list[str]:
    """``nla fit`` on a synthetic dataset, tiny and without a logger unless ``extra`` sets one; with ``figures``,
    with every default callback."""
    settings = [*TINY, *NO_LOGGER] if figures else QUICK
    run = ["--data.root", str(root), "--trainer.default_root_dir", str(run_dir), "--trainer.max_epochs", str(epochs)]
    return ["fit", "--config", str(CONFIGS / config), *settings, *run, *extra]


@pytest.fixture(autouse=True)
def _cli_argv(monkeypatch):
    """The CLI is driven through its ``args``; pytest's own argv must not look like extra CLI arguments."""
    monkeypatch.setattr("sys.argv", ["nla"])


@pytest.fixture(scope="session")
def rafdb_root(tmp_path_factory) -> Path:
    return write_rafdb(tmp_path_factory.mktemp("rafdb"), train_per_class=6, test_per_class=3, size=24)


@pytest.fixture(scope="session")
def rafdb_folders_root(tmp_path_factory) -> Path:
    return write_rafdb(
        tmp_path_factory.mktemp("rafdb_folders"), train_per_class=6, test_per_class=3, size=24, layout="folders"
    )


@pytest.fixture(scope="session")
def ferplus_root(tmp_path_factory) -> Path:
    return write_ferplus(tmp_path_factory.mktemp("ferplus"), per_class=3, size=24)


@pytest.fixture(scope="session")
def affectnet_root(tmp_path_factory) -> Path:
    return write_affectnet(tmp_path_factory.mktemp("affectnet"), per_class=3, size=32)


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("folders"), per_class=3, size=24)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, rafdb_root) -> Path:
    """A finished two-epoch run on the synthetic RAF-DB, shared by the tests that only read it (copy it to change it)."""
    from nla.cli import main

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    with patch("sys.argv", ["nla"]):
        main(fit_args(rafdb_root, run_dir, epochs=2))
    return run_dir
