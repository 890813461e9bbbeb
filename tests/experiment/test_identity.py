"""A table cell holds only the run the grid names: runs whose recorded settings (the command, the overlays' content)
are not the cell's are listed as stale and never averaged; a run that would mix two settings is not resumed; what
does not change a run's settings (the grid folder's place, a class nla moved) keeps it."""

import errno
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nla.cli import main
from nla.experiment import Experiment
from nla.experiment.attempts import config_digests, runner_record
from nla.records import Evaluation, RunSummary
from tests.experiment.test_integrity import rewrite
from tests.experiment.test_runner import write_experiment
from tests.helpers import finish_by_hand, says


def own_overlay(tmp_path, config) -> Path:
    """CE's overlay as a file of the test's own, which the test may edit."""
    overlay = tmp_path / "ce.yaml"
    overlay.write_text("model:\n  criterion: {loss: ce, naw: false, consistency: none}\n")
    rewrite(config, lambda spec: spec["methods"].update(CE=[str(overlay)]))
    return overlay


def tables(config, capsys, *extra) -> str:
    main(["experiment", config, "--tables_only", *extra])
    capsys.readouterr()
    return (Experiment.load(config).root / "results.md").read_text()


def test_tables_only_after_the_args_changed_lists_the_old_runs_as_stale(tmp_path, rafdb_root, capsys):
    """--tables_only rewrote results.md's header with the new arguments over the old runs' numbers."""
    config = write_experiment(tmp_path, rafdb_root)
    finish_by_hand(Experiment.load(config), "clean", "CE", 0)
    rewrite(config, lambda spec: spec["args"].extend(["--trainer.max_epochs", "4"]))
    text = tables(config, capsys)
    assert "0 of the 4 cells finished" in text and "| CE | — | — |" in text
    assert "- CE / clean / seed 0: `--trainer.max_epochs 4` is given now" in text


def test_seeds_of_two_overlays_are_not_averaged(tmp_path, rafdb_root, capsys):
    """An overlay edited while the runner was between seeds: the table averaged seeds of two settings."""
    config = rewrite(write_experiment(tmp_path, rafdb_root), lambda spec: spec.update(seeds=[0, 1]))
    overlay = own_overlay(tmp_path, config)
    finish_by_hand(Experiment.load(config), "clean", "CE", 0, acc_matrix=((2, 0), (0, 2)))
    overlay.write_text(overlay.read_text() + "  lr: 0.001\n")
    finish_by_hand(Experiment.load(config), "clean", "CE", 1)
    text = tables(config, capsys)
    assert "| CE | 75.00 (1 of 2 seeds) | 75.00 (1 of 2 seeds) |" in text  # seed 1's alone, not (100 + 75) / 2
    assert f"- CE / clean / seed 0: {overlay} changed since" in text


def test_a_comment_in_an_overlay_and_a_record_of_its_bytes_keep_the_cell(tmp_path, rafdb_root, capsys):
    """An overlay's comment or layout is not a setting; a runner.json of an older nla recorded the file's bytes."""
    config = write_experiment(tmp_path, rafdb_root)
    overlay = own_overlay(tmp_path, config)
    run_dir = finish_by_hand(Experiment.load(config), "clean", "CE", 0)
    overlay.write_text("# CE, one view\nmodel:\n  criterion:\n    {consistency: none, loss: ce, naw: false}\n")
    text = tables(config, capsys)
    assert "1 of the 4 cells finished" in text and "stale" not in text
    record = json.loads((run_dir / "runner.json").read_text())
    record["attempts"][0]["configs"][str(overlay)] = hashlib.sha256(overlay.read_bytes()).hexdigest()  # as before 0.3
    (run_dir / "runner.json").write_text(json.dumps(record))
    assert "stale" not in tables(config, capsys)
    overlay.write_text(overlay.read_text().replace("ce,", "focal,"))
    assert f"- CE / clean / seed 0: {overlay} changed since" in tables(config, capsys)


def test_a_cell_killed_then_its_overlay_edited_is_not_resumed(tmp_path, rafdb_root, capsys):
    """A cell killed mid-run, its overlay then edited, resumed into a run of two settings under the method's name."""
    config = write_experiment(tmp_path, rafdb_root)
    overlay = own_overlay(tmp_path, config)
    experiment = Experiment.load(config)
    run_dir = finish_by_hand(experiment, "clean", "CE", 0)
    (run_dir / "summary.json").unlink()
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    record = json.loads((run_dir / "runner.json").read_text())
    record["attempts"][0].update(exit_code=None, wall_s=None)  # killed
    (run_dir / "runner.json").write_text(json.dumps(record))
    overlay.write_text(overlay.read_text() + "  lr: 0.001\n")
    with pytest.raises(SystemExit):
        main(["experiment", config, "--methods", "[CE]", "--protocols", "[clean]"])
    err = capsys.readouterr().err
    says(err, f"CE / clean / seed 0 was started in {run_dir}", f"{overlay} changed since", "move that folder aside")
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == b"a checkpoint"


def test_what_does_not_change_a_run_keeps_it(tmp_path, rafdb_root, capsys):
    """A grid folder moved elsewhere was refused for its path alone; a class nla moved made the cells stale."""
    config = write_experiment(tmp_path, rafdb_root)
    old = ["--trainer.callbacks+=nla.diagnostics.SampleRecord"]
    finish_by_hand(Experiment.load(config), "clean", "CE", 0, extra=old)
    shutil.move(tmp_path / "grid", tmp_path / "moved")
    rewrite(config, lambda spec: spec.update(output_dir=str(tmp_path / "moved")))
    text = tables(config, capsys, "--trainer.callbacks+=nla.callbacks.SampleRecord")
    assert "| CE | 75.00 | 75.00 |" in text and "in no table" not in text


def test_a_runner_killed_without_a_word_neither_loses_a_finished_run_nor_splits_a_running_one(
    tmp_path, rafdb_root, capsys
):
    config = write_experiment(tmp_path, rafdb_root)
    experiment = Experiment.load(config)
    finished = finish_by_hand(experiment, "clean", "CE", 0)
    record = json.loads((finished / "runner.json").read_text())
    record["attempts"][0].update(exit_code=None, wall_s=None, started=time.time() - 60)  # its runner was SIGKILLed
    (finished / "runner.json").write_text(json.dumps(record))
    (finished / "summary.json").touch()  # the orphan fit finished after its runner died
    assert runner_record(finished)["attempts"][0]["exit_code"] == 0
    orphan_dir = experiment.run_dir("clean", "NLA", 0)
    orphan_dir.mkdir(parents=True)  # an orphan fit that has not locked its folder yet
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(orphan_dir)])
    try:
        command = ["-m", "nla", "fit"]
        attempt = {"command": command, "configs": {}, "started": time.time(), "wall_s": None, "pid": orphan.pid}
        (orphan_dir / "runner.json").write_text(json.dumps({"attempts": [{**attempt, "exit_code": None}]}))
        main(["experiment", config, "--protocols", "[clean]", "--dry_run"])
        printed = capsys.readouterr().out
        assert "[done]    CE / clean / seed 0" in printed and "[busy]    NLA / clean / seed 0" in printed
        assert orphan_dir.is_dir() and not orphan_dir.with_name("seed0.incomplete").exists()
    finally:
        orphan.kill()
        orphan.wait()


def test_two_grid_files_of_one_name_do_not_share_a_folder(tmp_path, rafdb_root, capsys):
    config = write_experiment(tmp_path, rafdb_root)
    finish_by_hand(Experiment.load(config), "clean", "CE", 0)
    tables(config, capsys)
    other = tmp_path / "copy" / "tiny.yaml"
    other.parent.mkdir()
    shutil.copy(config, other)
    with pytest.raises(SystemExit):
        main(["experiment", str(other), "--tables_only"])
    says(capsys.readouterr().err, f"holds the runs and tables of grid 'tiny' of {Path(config).resolve()}, not of")


@pytest.mark.parametrize("name", ["..", "../elsewhere", "a/b"])
def test_a_grid_name_that_is_not_one_folder_is_refused(tmp_path, rafdb_root, capsys, name):
    config = rewrite(write_experiment(tmp_path, rafdb_root), lambda spec: spec.update(name=name, output_dir=None))
    with pytest.raises(SystemExit):
        main(["experiment", config, "--dry_run"])
    assert f"name {name!r} is the grid's folder under runs/experiments" in capsys.readouterr().err


def test_folders_that_cannot_hold_the_grid_are_one_line(tmp_path, rafdb_root, capsys):
    config = write_experiment(tmp_path, rafdb_root)
    with pytest.raises(SystemExit):
        main(["experiment", config, "--tables_only"])  # a mistyped --output_dir: not made
    assert "no run of grid 'tiny' in" in capsys.readouterr().err and not (tmp_path / "grid").exists()
    (tmp_path / "grid").write_text("a file")
    with pytest.raises(SystemExit):
        main(["experiment", config, "--dry_run"])
    assert f"--output_dir {str(tmp_path / 'grid')!r}: " in capsys.readouterr().err
    (tmp_path / "grid").unlink()
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "clean").write_text("a file where a protocol's folder goes")
    with pytest.raises(SystemExit):
        main(["experiment", config, "--dry_run"])
    assert f"{tmp_path / 'grid' / 'clean'} is a file where the grid keeps its runs" in capsys.readouterr().err


def test_dry_run_prints_commands_a_shell_takes(tmp_path, rafdb_root, capsys):
    config = write_experiment(tmp_path, rafdb_root)
    main(["experiment", config, "--dry_run", "--data.root", "/data/RAF DB"])
    assert "--data.root '/data/RAF DB'" in capsys.readouterr().out


def test_a_full_disk_names_the_file(tmp_path, rafdb_root, capsys, monkeypatch):
    config = write_experiment(tmp_path, rafdb_root)
    finish_by_hand(Experiment.load(config), "clean", "CE", 0)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(SystemExit):
        main(["experiment", config, "--tables_only"])
    says(capsys.readouterr().err, "No space left on device writing", str(tmp_path / "grid"))


@pytest.mark.slow
def test_a_job_stopped_stops_its_fit(tmp_path):
    """SIGINT (submitit's local cancel) or SIGTERM to a job left its nla fit running."""
    marker = tmp_path / "terminated"
    fit = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (open({str(marker)!r}, 'w').write('yes'), sys.exit(143)))\n"
        "time.sleep(60)\n"
    )
    job = (
        "import sys\nfrom nla.experiment.launchers import run_logged\n"
        f"sys.exit(run_logged([sys.executable, '-c', {fit!r}], '.', {str(tmp_path / 'fit.log')!r}))"
    )
    process = subprocess.Popen([sys.executable, "-c", job])
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 143 and marker.read_text() == "yes"


def test_config_digests_and_records_are_read_back(tmp_path):
    overlay = tmp_path / "a.yaml"
    overlay.write_text("x: 1\n")
    assert list(config_digests(["--config", str(overlay), "--config", "absent.yaml"])) == [str(overlay)]
    record = Evaluation.from_confusion([[1]], ["a"], epoch=0)
    assert RunSummary([record]).write(tmp_path).is_file() and runner_record(tmp_path) == {
        "attempts": [],
        "wall_s": None,
    }
