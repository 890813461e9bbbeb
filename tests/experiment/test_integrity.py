"""A grid is a record that cannot lie: no name, seed or cell counted twice or under another's name, one runner per
grid folder, a live cell never moved aside, and tables that say how many of the listed cells they hold."""

import json
import shutil
import sys

import pytest
import yaml

from nla.cli import main
from nla.errors import UserError
from nla.experiment import Experiment, ExperimentError, collect, write_tables
from nla.records import Evaluation, RunSummary
from nla.rundir import RunLock
from tests.experiment.test_runner import write_experiment
from tests.helpers import finish_by_hand, says


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
    printed = capsys.readouterr()
    assert "[busy]    CE / clean / seed 0: a fit is running in" in printed.out
    assert "1 cell(s) still running in a fit of an earlier runner, not finished: ['CE / clean / seed 0']" in printed.err
    assert live.is_dir() and not live.with_name("seed0.incomplete").exists()


def test_the_tables_say_how_many_of_the_listed_cells_they_hold(tmp_path, rafdb_root):
    config = rewrite(write_experiment(tmp_path, rafdb_root), lambda spec: spec.update(seeds=[0, 1]))
    experiment = Experiment.load(config)
    finish_by_hand(experiment, "clean", "CE", 0)  # 75% overall, 75% mean
    markdown, _ = write_tables(experiment, collect(experiment))
    text = markdown.read_text()
    assert "1 of the 8 cells finished" in text
    assert "| CE | 75.00 (1 of 2 seeds) | 75.00 (1 of 2 seeds) |" in text


def test_a_finished_cell_the_grid_would_now_run_otherwise_stops_the_grid(tmp_path, rafdb_root, capsys):
    """A finished cell was reused after its settings changed, and the table's header described the new settings."""
    config = write_experiment(tmp_path, rafdb_root)
    experiment = Experiment.load(config)
    done = finish_by_hand(experiment, "clean", "CE", 0, extra=["--data.root", "/data/raf"])

    def cells():
        return {p: p.stat().st_mtime_ns for p in experiment.root.rglob("*") if p.name not in (".nla.lock", "grid.json")}

    before = cells()

    with pytest.raises(SystemExit) as stopped:  # the command line changed
        main(["experiment", config, "--data.root", "/data/raf", "--trainer.max_epochs", "4"])
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 1 and len(err.splitlines()) == 1
    assert f"CE / clean / seed 0 finished in {done} with other settings" in err
    assert "`--trainer.max_epochs 4` is given now" in err and "nothing was run" in err
    assert cells() == before  # no cell started or moved

    rewrite(config, lambda spec: spec["protocols"].update({"clean": [spec["protocols"]["noise 20%"][0]]}))
    with pytest.raises(SystemExit):  # the file gave the protocol another overlay
        main(["experiment", config, "--data.root", "/data/raf", "--dry_run"])
    assert "with other settings" in capsys.readouterr().err

    overlay = tmp_path / "epochs.yaml"
    overlay.write_text("trainer: {max_epochs: 2}\n")
    rewrite(config, lambda spec: spec["protocols"].update({"clean": [str(overlay)]}))
    experiment = Experiment.load(config)
    shutil.rmtree(done)
    finish_by_hand(experiment, "clean", "CE", 0)
    overlay.write_text("trainer: {max_epochs: 3}\n")  # the same file, edited
    with pytest.raises(SystemExit):
        main(["experiment", config, "--dry_run"])
    assert f"({overlay} changed since)" in capsys.readouterr().err


def test_a_folder_holds_one_grid(tmp_path, rafdb_root, capsys):
    """A second grid in the same --output_dir counted the first one's runs as its own and wrote its tables over
    the first's."""
    config = write_experiment(tmp_path, rafdb_root)
    experiment = Experiment.load(config)
    finish_by_hand(experiment, "clean", "CE", 0)
    main(["experiment", config, "--tables_only"])
    tables = (experiment.root / "results.md").read_text()
    other = str(tmp_path / "other.yaml")
    spec = yaml.safe_load(open(config))
    spec["name"] = "another"
    open(other, "w").write(yaml.safe_dump(spec))
    for extra in ([], ["--tables_only"], ["--dry_run"]):
        with pytest.raises(SystemExit):
            main(["experiment", other, *extra])
        err = capsys.readouterr().err
        assert f"{experiment.root} holds the runs and tables of grid 'tiny', not 'another'" in err
    assert (experiment.root / "results.md").read_text() == tables


@pytest.mark.parametrize("option", ["--seed_everything", "--trainer.default_root_dir", "--ckpt_path"])
def test_options_each_cell_sets_itself_are_refused(tmp_path, rafdb_root, capsys, option):
    """--seed_everything 7 after the file gave every seed's run seed 7: the table showed '± 0.00' over 'seeds'."""
    config = write_experiment(tmp_path, rafdb_root)
    with pytest.raises(SystemExit):
        main(["experiment", config, f"{option}=7", "--dry_run"])
    assert f"{option} in the command line: each cell sets its own" in capsys.readouterr().err
    rewrite(config, lambda spec: spec["args"].extend([option, "7"]))
    with pytest.raises(SystemExit):
        main(["experiment", config, "--dry_run"])
    assert f"{option} in the experiment's args" in capsys.readouterr().err


def test_the_tables_are_the_whole_grid_whatever_part_of_it_runs(tmp_path, rafdb_root, capsys):
    """`--seeds [0] --tables_only` on a 3-seed grid rewrote its tables with seed 0 alone, and hid the failed cells."""
    config = rewrite(write_experiment(tmp_path, rafdb_root), lambda spec: spec.update(seeds=[0, 1]))
    experiment = Experiment.load(config)
    finish_by_hand(experiment, "clean", "CE", 0)
    finish_by_hand(experiment, "clean", "CE", 1, acc_matrix=((2, 0), (0, 2)))
    main(["experiment", config, "--seeds", "[0]", "--methods", "[CE]", "--tables_only"])
    text = (experiment.root / "results.md").read_text()
    assert "seeds [0, 1]" in text and "2 of the 8 cells finished" in text
    assert "| CE | 87.50 ± 17.68 | 87.50 ± 17.68 |" in text and "| NLA | — | — |" in text
    main(["experiment", config, "--seeds", "[0, 2]", "--methods", "[CE]", "--protocols", "[clean]", "--dry_run"])
    with pytest.raises(SystemExit):
        main(["experiment", config, "--methods", "[]", "--dry_run"])
    assert "--methods is empty: name some of ['CE', 'NLA']" in capsys.readouterr().err


def test_the_tables_hold_the_runs_of_one_command_line_and_title_what_they_average(tmp_path, rafdb_root, capsys):
    """A table averaged runs made with different command lines, and counted a fit made by hand in a cell's folder."""
    config = write_experiment(tmp_path, rafdb_root)
    experiment = Experiment.load(config)
    raf = ["--data.root", "/data/raf"]
    finish_by_hand(experiment, "clean", "CE", 0, extra=raf)
    finish_by_hand(experiment, "clean", "NLA", 0, extra=[*raf, "--config", "cpu.yaml"])
    records = [Evaluation.from_confusion([[1, 0, 0], [0, 1, 0], [0, 0, 1]], ["a", "b", "c"], epoch=k) for k in range(6)]
    finish_by_hand(experiment, "noise 20%", "CE", 0, extra=raf, summary=RunSummary(records, last_k=5))
    (experiment.run_dir("noise 20%", "CE", 0) / "runner.json").unlink()  # a fit made by hand
    with pytest.raises(SystemExit):
        main(["experiment", config, "--tables_only"])
    says(capsys.readouterr().err, "were made with different command lines", "`--data.root /data/raf`")
    main(["experiment", config, "--tables_only", *raf])
    text = (experiment.root / "results.md").read_text()
    assert "on the command line: `--data.root /data/raf`" in text and "1 of the 4 cells finished" in text
    assert "2 finished run(s) are in no table" in text
    assert "- NLA / clean / seed 0: `--config cpu.yaml` is not given now" in text
    assert "- CE / noise 20% / seed 0: no attempt of the grid's runner finished it" in text
    assert "| CE | 75.00 | 75.00 | — | — |" in text and "| NLA | — | — |" in text
    err = capsys.readouterr().err
    assert "[stale]   NLA / clean / seed 0: in no table" in err


def test_the_tables_title_what_they_average_and_escape_names(tmp_path, rafdb_root):
    config = write_experiment(tmp_path, rafdb_root)
    experiment = Experiment.load(config)
    finish_by_hand(experiment, "clean", "CE", 0)
    records = [Evaluation.from_confusion([[1, 0, 0], [0, 1, 0], [0, 0, 1]], ["a", "b", "c"], epoch=k) for k in range(6)]
    finish_by_hand(experiment, "noise 20%", "CE", 0, summary=RunSummary(records, last_k=5))  # a class the others lack
    experiment.methods["A|B"] = experiment.methods.pop("NLA")  # a name with the table's separator in it
    markdown, table = write_tables(experiment, collect(Experiment.load(config)))
    text = markdown.read_text()
    assert "mean of the last 1 or 5 epochs" in text and "| A\\|B |" in text
    assert "| method | a | b | c |" in text  # every run's classes, not the first run's
    header = table.read_text().splitlines()[0].split(",")
    assert header[7:10] == ["a", "b", "c"] and header[-1] == "extra_args"


def test_a_summary_cut_short_is_one_line_not_a_finished_cell(tmp_path, rafdb_root, capsys):
    config = write_experiment(tmp_path, rafdb_root)
    run_dir = finish_by_hand(Experiment.load(config), "clean", "CE", 0)
    (run_dir / "summary.json").write_text('{"epochs": [')
    for extra in (["--tables_only"], ["--dry_run"]):
        with pytest.raises(SystemExit):
            main(["experiment", config, *extra])
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{run_dir / 'summary.json'}:1: not valid JSON" in err
        assert "move" in err and "aside and the grid runs the cell again" in err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda spec: spec.update(methods={}), "methods is empty; a grid needs at least one"),
        (lambda spec: spec["paper"].update({"NLAA": {"clean": [1, 2]}}), "paper names method 'NLAA'"),
        (lambda spec: spec["paper"]["NLA"].update({"clen": [1, 2]}), "paper['NLA'] names protocol 'clen'"),
        (lambda spec: spec["paper"]["NLA"].update({"clean": [1, 2, 3]}), "expected [overall, mean]"),
        (lambda spec: spec["methods"].update({"..": []}), "methods '..' names no folder"),
        (lambda spec: spec["methods"].update({"!!!": []}), "methods '!!!' names no folder"),
        (lambda spec: spec["protocols"].update({"Cluster": []}), "would share the cluster's folder"),
        (lambda spec: spec["methods"].update({"X": ["configs"]}), "names 'configs', a folder; expected a config file"),
    ],
)
def test_grid_files_that_would_print_wrong_tables_are_refused(tmp_path, rafdb_root, change, message):
    config = rewrite(write_experiment(tmp_path, rafdb_root), change)
    with pytest.raises(ExperimentError) as refused:
        Experiment.load(config)
    assert message in str(refused.value)


def test_a_bad_option_after_the_experiment_file_is_one_line(tmp_path, rafdb_root, capsys):
    config = write_experiment(tmp_path, rafdb_root)
    with pytest.raises(SystemExit):
        main(["experiment", config, "--seeds", "[a]"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nla experiment: error: --seeds") and "a" in err


@pytest.mark.slow
def test_one_methods_own_mistake_does_not_stop_the_others(tmp_path, rafdb_root, monkeypatch, capsys):
    """A method with a bad backbone, listed first, failed alike on both its seeds, and the grid stopped with 'the
    others would too': CE never ran."""
    import nla.experiment.runner

    def failing(experiment, protocol, method, seed, extra, resume):
        code = "print('nla: error: bad backbone'); raise SystemExit(1)" if method == "BAD" else "pass"
        return [sys.executable, "-c", code]

    monkeypatch.setattr(nla.experiment.runner, "fit_command", failing)
    config = rewrite(
        write_experiment(tmp_path, rafdb_root),
        lambda spec: spec.update(methods={"BAD": [], **spec["methods"]}, seeds=[0, 1], paper={}),
    )
    with pytest.raises(SystemExit):
        main(["experiment", config, "--protocols", "[clean]"])
    printed = capsys.readouterr()
    assert printed.out.count("[failed]  BAD") == 2 and "the others would too" not in printed.err
    assert "[failed]  CE / clean / seed 1" in printed.out  # it ran (the stand-in writes no summary)


def test_a_cell_a_fit_refuses_to_resume_says_what_to_do_in_a_grid(tmp_path, rafdb_root, monkeypatch, capsys):
    """A cell's fit refused to resume with "start a new run with another --trainer.default_root_dir", which a grid,
    setting every cell's folder, does not take."""
    import nla.experiment.runner

    refusal = "nla: error: cannot resume x: start a new run with another --trainer.default_root_dir"
    code = f"print({refusal!r}); raise SystemExit(1)"
    monkeypatch.setattr(nla.experiment.runner, "fit_command", lambda *args, **kwargs: [sys.executable, "-c", code])
    config = write_experiment(tmp_path, rafdb_root)
    with pytest.raises(SystemExit):
        main(["experiment", config, "--methods", "[CE]", "--protocols", "[clean]"])
    run_dir = Experiment.load(config).run_dir("clean", "CE", 0)
    assert f"(in a grid: move {run_dir} aside and the same command runs the cell anew)" in capsys.readouterr().out
