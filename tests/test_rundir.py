"""A run directory holds what its run did: a fresh fit never inherits a dead attempt's files, every way out of an
interrupted save resumes or starts anew with one line saying which, and protocol files are recorded as found."""

import shutil

import yaml

from nla.cli import main
from nla.rundir import CHECKPOINTS, holds_run
from tests.conftest import fit_args
from tests.helpers import fails


def flipped(labels_file, rafdb_root) -> int:
    shipped = dict(line.split() for line in (rafdb_root / "basic" / "EmoLabel" / "list_patition_label.txt").open())
    return sum(shipped[name] != label for name, label in (line.split() for line in labels_file.open()))


def test_a_fresh_fit_never_inherits_a_dead_attempts_training_labels(rafdb_root, tmp_path, capsys):
    """A 30%-noise fit killed before its first checkpoint, then a 10% one: train_labels.txt said 30%."""
    run_dir = tmp_path / "run"
    noise = ["--data.protocol.noise_source", "generate", "--data.protocol.noise_rate"]
    fails(fit_args(rafdb_root, run_dir, *noise, "0.3", "--model.num_classes", "5"), capsys)  # dies after its labels
    assert flipped(run_dir / "train_labels.txt", rafdb_root) == round(0.3 * 42)
    main(fit_args(rafdb_root, run_dir, *noise, "0.1"))
    assert flipped(run_dir / "train_labels.txt", rafdb_root) == round(0.1 * 42)
    assert flipped(run_dir / "train_labels-unstarted.txt", rafdb_root) == round(0.3 * 42)  # kept, not overwritten
    assert "held the files of an attempt that never finished an epoch" in capsys.readouterr().err


def test_a_label_file_that_fails_its_checks_is_never_written_as_the_runs(rafdb_root, tmp_path, capsys):
    """A fit with an empty label file failed, and a later good fit kept its 0-line train_labels.txt."""
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    run_dir = tmp_path / "run"
    assert "has no images of class" in fails(
        fit_args(rafdb_root, run_dir, "--data.protocol.train_label_file", str(empty)), capsys
    )
    assert not (run_dir / "train_labels.txt").exists()


def test_best_checkpoints_without_last_start_anew_and_say_so(trained_run, rafdb_root, tmp_path, capsys):
    """A kill while the first epoch's checkpoints were written left best-* without last.ckpt: the folder neither
    resumed (no last.ckpt) nor started anew (it 'held a run')."""
    run_dir = tmp_path / "run"
    (run_dir / CHECKPOINTS).mkdir(parents=True)
    best = next((trained_run / CHECKPOINTS).glob("best-acc-*.ckpt"))
    shutil.copy(best, run_dir / CHECKPOINTS / best.name)
    (run_dir / CHECKPOINTS / ".last.ckpt.k3j2.partial").write_bytes(b"cut short")
    assert not holds_run(run_dir)
    main(fit_args(rafdb_root, run_dir))
    assert holds_run(run_dir) and (run_dir / f"{CHECKPOINTS}-unstarted" / best.name).is_file()
    assert f"they are kept as {CHECKPOINTS}-unstarted" in capsys.readouterr().err


def test_a_relative_label_file_is_recorded_where_it_was_found(rafdb_root, tmp_path, monkeypatch):
    """It was recorded as given, relative, and a later command read it relative to the run's folder."""
    monkeypatch.chdir(tmp_path)
    labels = tmp_path / "mine.txt"
    shipped = (rafdb_root / "basic" / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    labels.write_text("".join(f"{line}\n" for line in shipped if line.startswith("train_")))
    run_dir = tmp_path / "runs" / "mine"
    main(fit_args(rafdb_root, run_dir, "--data.protocol.train_label_file", "mine.txt"))
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["init_args"]["protocol"]
    assert recorded["train_label_file"] == str(labels)
