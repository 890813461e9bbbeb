"""A grid is a record that cannot lie: no name, seed or cell counted twice or under another's name, one runner per
grid folder, a live cell never moved aside, and tables that say how many of the listed cells they hold."""

import json
import sys

import pytest
import yaml

from nla.cli import main
from nla.errors import UserError
from nla.experiment import Experiment, ExperimentError, collect, write_tables
from nla.records import Evaluation, RunSummary
from nla.rundir import RunLock
from tests.experiment.test_runner import write_experiment


def rewrite(path, change) -> str:
    spec = yaml.safe_load(open(path))
    change(spec)
    open(path, "w").write(yaml.safe_dump(spec))
    return path


def test_a_method_named_twice_is_refused_with_its_lines(tmp_path, rafdb_root):
    """YAML keeps the last of two keys: the CE row held NLA's numbers."""
    config = write_experiment(tmp_path, rafdb_root)
    spec = yaml.safe_load(open(config))
    methods = "\n".join(f"  {name}: {json.dumps(overlays)}" for name, overlays in spec.pop("methods").items())
    text = yaml.safe_dump(spec) + "methods:\n" + methods.replace("  NLA:", "  CE:") + "\n"
    open(config, "w").write(text)
    lines = text.splitlines()
    first, second = [i + 1 for i, line in enumerate(lines) if line.startswith("  CE:")]
    with pytest.raises(UserError, match=rf"{config}:{second}: 'CE' is given twice \(first on line {first}\)"):
        Experiment.load(config)


@pytest.mark.parametrize("kind", ["methods", "protocols"])
def test_two_names_that_share_a_folder_are_refused(tmp_path, rafdb_root, kind):
    """``CE`` and ``ce`` ran into one folder: one failed, and the tables showed the other's numbers under both."""

    def clash(spec):
        first = next(iter(spec[kind]))
        spec[kind][first.lower() if first != first.lower() else first.upper()] = spec[kind][first]

    config = rewrite(write_experiment(tmp_path, rafdb_root), clash)
    with pytest.raises(ExperimentError, match=r"would share the folder '(ce|clean)'; rename one"):
        Experiment.load(config)


def test_a_seed_listed_twice_is_refused_in_the_file_and_on_the_command_line(tmp_path, rafdb_root, capsys):
    """``seeds: [0, 0]`` ran the cell twice, and the table reported one run as two seeds with a std of 0."""
    config = write_experiment(tmp_path, rafdb_root)
    with pytest.raises(SystemExit):
        main(["experiment", config, "--seeds", "[0, 0]", "--dry_run"])
    assert "seeds [0, 0] list [0] more than once" in capsys.readouterr().err
    rewrite(config, lambda spec: spec.update(seeds=[1, 0, 1]))
    with pytest.raises(ExperimentError, match=r"seeds \[1, 0, 1\] list \[1\] more than once"):
        Experiment.load(config)


def test_a_second_runner_on_the_same_grid_stops_before_touching_a_cell(tmp_path, rafdb_root, capsys):
    """It moved the first runner's live cell aside, and one run ended up split over two folders."""
    config = write_experiment(tmp_path, rafdb_root)
    experiment = Experiment.load(config)
    stale = experiment.run_dir("clean", "CE", 0)
    stale.mkdir(parents=True)
    (stale / "fit.log").write_text("starting\n")
    held = RunLock(experiment.root, "grid folder").acquire()
    try:
        with pytest.raises(SystemExit):
            main(["experiment", config])
    finally:
        held.release()
    err = capsys.readouterr().err
    assert f"grid folder {str(experiment.root)!r} is in use by process" in err and "another --output_dir" in err
    assert stale.is_dir() and not stale.with_name("seed0.incomplete").exists()


def test_a_cell_a_fit_is_running_in_is_left_alone(tmp_path, rafdb_root, capsys, monkeypatch):
    import nla.experiment.runner

    monkeypatch.setattr(nla.experiment.runner, "fit_command", lambda *args, **kwargs: [sys.executable, "-c", "pass"])
    config = write_experiment(tmp_path, rafdb_root)
    live = Experiment.load(config).run_dir("clean", "CE", 0)
    live.mkdir(parents=True)
    fit = RunLock(live).acquire()  # as a fit started by hand holds it
    try:
        with pytest.raises(SystemExit):  # the stand-in fits write no summary
            main(["experiment", config, "--protocols", "[clean]"])
    finally:
        fit.release()
    assert "[busy]    CE / clean / seed 0: a fit is running in" in capsys.readouterr().out
    assert live.is_dir() and not live.with_name("seed0.incomplete").exists()


def test_the_tables_say_how_many_of_the_listed_cells_they_hold(tmp_path, rafdb_root):
    config = rewrite(write_experiment(tmp_path, rafdb_root), lambda spec: spec.update(seeds=[0, 1]))
    experiment = Experiment.load(config)
    run_dir = experiment.run_dir("clean", "CE", 0)
    run_dir.mkdir(parents=True)
    record = Evaluation.from_confusion([[1, 1], [0, 2]], ["a", "b"], epoch=0)  # 75% overall, 75% mean
    RunSummary([record]).write(run_dir)
    markdown, _ = write_tables(experiment, collect(experiment))
    text = markdown.read_text()
    assert "1 of the 8 cells finished" in text
    assert "| CE | 75.00 (1 of 2 seeds) | 75.00 (1 of 2 seeds) |" in text
