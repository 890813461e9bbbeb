"""The experiment runner on a tiny 2 x 2 grid: runs (two at a time), tables, and resuming a half-finished grid."""

import csv
import json
import os
import signal
import sys
import threading
import time

import pytest
import yaml

from nla.cli import main
from nla.experiment import Experiment, ExperimentError
from tests.conftest import CONFIGS, QUICK
from tests.helpers import finish_by_hand

GRID_SETTINGS = "--trainer.max_epochs 2 --trainer.limit_train_batches 2 --data.protocol.noise_source generate"


def write_experiment(tmp_path, rafdb_root) -> str:
    spec = {
        "name": "tiny",
        "base": [str(CONFIGS / "rafdb.yaml")],
        "methods": {"CE": [str(CONFIGS / "methods" / "ce.yaml")], "NLA": [str(CONFIGS / "methods" / "nla.yaml")]},
        "protocols": {"clean": [], "noise 20%": [str(CONFIGS / "noise" / "20.yaml")]},
        "seeds": [0],
        "output_dir": str(tmp_path / "grid"),
        "args": [*QUICK, "--data.root", str(rafdb_root), *GRID_SETTINGS.split()],
        "paper": {"NLA": {"clean": [89.93, 83.87]}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def attempts(run_dir) -> list:
    return json.loads((run_dir / "runner.json").read_text())["attempts"]


@pytest.mark.slow
def test_grid_runs_writes_tables_and_resumes(tmp_path, rafdb_root, capsys, monkeypatch):
    config = write_experiment(tmp_path, rafdb_root)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    main(["experiment", "--jobs", "2", config])
    experiment = Experiment.load(config)
    cells = experiment.cells()
    assert len(cells) == 4
    for cell in cells:
        summary = json.loads((experiment.run_dir(*cell) / "summary.json").read_text())
        assert summary["environment"]["threads"] == 1  # two runs at once share the 2 cores
    rows = list(csv.DictReader(open(tmp_path / "grid" / "results.csv")))
    assert len(rows) == 4 * 3  # cells x (last, best, mean of last 5)
    assert {r["evaluation"] for r in rows} == {"last", "best", "mean_last"}
    assert all(0 <= float(r["acc"]) <= 1 and r["Fear"] != "" for r in rows)
    markdown = (tmp_path / "grid" / "results.md").read_text()
    assert (
        "| NLA |" in markdown
        and "89.93 / 83.87" in markdown
        and "Per-class accuracy, noise 20%, best epoch" in markdown
    )
    assert "mean of the last 2 epochs" in markdown  # runs of 2 epochs average both, whatever last_k
    noisy_rows = [r for r in rows if r["protocol"] == "noise 20%"]
    assert all(0 <= float(r["memorised"]) <= 1 and r["auroc_p_given"] for r in noisy_rows)  # the fits measured them
    assert all(r["memorised"] == "" for r in rows if r["protocol"] == "clean")
    assert "## Label noise in training, last epoch" in markdown and "noise 20% memorised" in markdown
    assert (tmp_path / "grid" / "curves-noise-20pct.png").is_file() and "(curves-clean.png)" in markdown
    noisy_nla = experiment.run_dir("noise 20%", "NLA", 0)
    assert (noisy_nla / "train_labels.txt").is_file()

    # Half-finish the grid: one run lost its summary after its last checkpoint, another never started.
    interrupted = experiment.run_dir("clean", "NLA", 0)
    (interrupted / "summary.json").unlink()
    never_started = experiment.run_dir("noise 20%", "CE", 0)
    never_started.rename(tmp_path / "elsewhere")
    stale = experiment.run_dir("clean", "CE", 0)
    untouched = {p: p.stat().st_mtime_ns for p in noisy_nla.rglob("*") if p.is_file()}
    capsys.readouterr()
    main(["experiment", "--jobs", "2", config])
    printed = capsys.readouterr().out
    assert "[done]    NLA / noise 20% / seed 0" in printed and "[done]    CE / clean / seed 0" in printed
    assert "[resume ] NLA / clean / seed 0" in printed and "[run    ] CE / noise 20% / seed 0" in printed
    assert {p: p.stat().st_mtime_ns for p in noisy_nla.rglob("*") if p.is_file()} == untouched
    assert len(attempts(stale)) == 1
    resumed = attempts(interrupted)
    assert len(resumed) == 2 and resumed[1]["command"][-2:] == ["--ckpt_path", "last"]
    assert json.loads((interrupted / "summary.json").read_text())["last"]["epoch"] == 1
    assert (never_started / "summary.json").is_file()


def test_a_stopped_grid_stops_its_runs_and_records_their_time(tmp_path, rafdb_root, monkeypatch, capsys):
    """SIGTERM to the runner (a scheduler's, or the end of a job) stops the runs it started, records how long they
    ran, and says in one line that the same command resumes them."""
    import nla.experiment.runner

    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    monkeypatch.setattr(nla.experiment.runner, "fit_command", lambda *args, **kwargs: sleeper)
    config = write_experiment(tmp_path, rafdb_root)
    experiment = Experiment.load(config)
    cells = [experiment.run_dir(*cell) for cell in experiment.cells()[:2]]

    def terminate_once_started():
        deadline = time.time() + 60
        while not all((cell / "runner.json").is_file() for cell in cells) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_once_started, daemon=True).start()
    with pytest.raises(SystemExit) as stopped:
        main(["experiment", "--jobs", "2", config])
    assert stopped.value.code == 143
    printed = capsys.readouterr()
    assert printed.err.strip().splitlines()[-1] == (
        "nla experiment: stopped by SIGTERM; the finished runs are kept, the same command resumes the rest"
    )
    assert printed.out.count("[stopped]") == 2
    for cell in cells:
        (attempt,) = attempts(cell)
        assert attempt["interrupted"] and attempt["exit_code"] == -signal.SIGTERM and 0.4 < attempt["wall_s"] < 60


@pytest.mark.parametrize("shared", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_a_grid_whose_runs_all_fail_at_their_start_alike_stops(shared, tmp_path, rafdb_root, monkeypatch, capsys):
    """A wrong --data.root made every cell of a grid fail, one after another; the same error from the first runs,
    before any checkpoint, stops the grid. Runs that fail each their own way do not."""
    import nla.experiment.runner

    def failing(experiment, protocol, method, seed, extra, resume):
        run_dir = experiment.run_dir(protocol, method, seed)
        error = "bad root" if shared else f"bad {method}"
        code = f"print('nla: error: {error} for {run_dir}'); raise SystemExit(1)"
        return [sys.executable, "-c", code]

    monkeypatch.setattr(nla.experiment.runner, "fit_command", failing)
    config = write_experiment(tmp_path, rafdb_root)
    with pytest.raises(SystemExit) as stopped:
        main(["experiment", config])
    printed = capsys.readouterr()
    assert stopped.value.code == 1
    assert f"[failed]  CE / clean / seed 0: bad {'root' if shared else 'CE'} for {tmp_path}" in printed.out
    if shared:
        assert printed.out.count("[failed]") == 2 and not (tmp_path / "grid" / "noise-20pct").exists()
        assert printed.err == (
            "nla experiment: error: stopped: the first 2 runs failed at their start with the same error, and the "
            "others would too (bad root for <run>); fix it and run the same command again\n"
        )
    else:
        assert printed.out.count("[failed]") == 4 and "4 run(s) failed" in printed.err


def test_an_attempt_whose_runner_died_is_closed_at_the_runs_last_write(tmp_path):
    from nla.experiment import runner_record

    run_dir = tmp_path / "seed0"
    run_dir.mkdir()
    started = time.time() - 1000
    done = {"command": ["fit"], "started": started - 500, "wall_s": 400.0, "exit_code": 1}
    killed = {"command": ["fit", "--ckpt_path", "last"], "started": started, "wall_s": None, "exit_code": None}
    (run_dir / "runner.json").write_text(json.dumps({"wall_s": 400.0, "attempts": [done, killed]}))
    (run_dir / "fit.log").write_text("epoch 3\n")
    os.utime(run_dir / "fit.log", (started + 300, started + 300))
    record = runner_record(run_dir)
    assert record["attempts"][1]["interrupted"] and record["attempts"][1]["wall_s"] == pytest.approx(300)
    assert record["wall_s"] == pytest.approx(700) and "interrupted" not in record["attempts"][0]
    assert runner_record(tmp_path / "never-ran")["wall_s"] is None


def test_a_cell_that_died_before_its_first_checkpoint_is_moved_aside_and_its_time_still_counts(
    tmp_path, rafdb_root, monkeypatch, capsys
):
    import nla.experiment.runner

    monkeypatch.setattr(nla.experiment.runner, "fit_command", lambda *args, **kwargs: [sys.executable, "-c", "pass"])
    config = write_experiment(tmp_path, rafdb_root)
    run_dir = Experiment.load(config).run_dir("clean", "CE", 0)
    run_dir.mkdir(parents=True)
    killed = {"command": ["fit"], "started": time.time() - 100, "wall_s": None, "exit_code": None}
    (run_dir / "runner.json").write_text(json.dumps({"wall_s": None, "attempts": [killed]}))
    (run_dir / "fit.log").write_text("loading\n")
    os.utime(run_dir / "fit.log", (killed["started"] + 40, killed["started"] + 40))
    with pytest.raises(SystemExit):  # the stand-in fit writes no summary, so the cell fails
        main(["experiment", config, "--methods", "[CE]", "--protocols", "[clean]"])
    assert "[stale]   CE / clean / seed 0: no checkpoint in" in capsys.readouterr().out
    aside = run_dir.with_name("seed0.incomplete")
    assert (aside / "fit.log").read_text() == "loading\n"  # moved, not deleted
    carried, new = attempts(run_dir)
    assert carried["moved_aside_to"] == "seed0.incomplete" and carried["wall_s"] == pytest.approx(40)
    assert new["exit_code"] == 0 and "moved_aside_to" not in new
    assert json.loads((run_dir / "runner.json").read_text())["wall_s"] == pytest.approx(40 + new["wall_s"])


def test_dry_run_and_bad_experiment_files(tmp_path, rafdb_root, capsys):
    config = write_experiment(tmp_path, rafdb_root)
    main(
        ["experiment", config, "--dry_run", "--methods", "[NLA]", "--protocols", "[clean]", "--data.root", "/elsewhere"]
    )
    printed = capsys.readouterr().out
    assert (
        printed.count("[run    ]") == 1
        and "--config" in printed
        and printed.rstrip().endswith("--data.root /elsewhere")
    )
    assert not (tmp_path / "grid").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "base": ["configs/absent.yaml"], "methods": {"CE": []}}))
    with pytest.raises(ExperimentError, match="names config 'configs/absent.yaml', which does not exist"):
        Experiment.load(bad)
    for option, message in ((["--methods", "[Nope]"], "no methods ['Nope']"), (["--seeds", "[]"], "no seeds to run")):
        with pytest.raises(SystemExit):
            main(["experiment", config, *option])
        assert message in capsys.readouterr().err  # [] ran the file's seeds


@pytest.mark.parametrize(
    "text, message",
    [
        ("methods: [a\n", "bad.yaml:2: not valid YAML (expected ',' or ']'"),
        ("- a\n- b\n", "bad.yaml: expected a mapping of name, base, methods, ...; got list"),
        ("name: x\nbase: []\nmethods: {CE: []}\nseeds: [0, x]\n", "bad.yaml: seeds is [0, 'x']; expected list[int]"),
        ("name: x\nbase: []\nmethods: {CE: ce.yaml}\n", "methods is {'CE': 'ce.yaml'}; expected dict[str, list[str]]"),
        ("name: x\nbase: []\nmethods: {CE: []}\nseeds: [0, -1]\n", "seed -1 is outside 0..4294967295"),
        ("name: x\nbase: []\nmethods: {CE: []}\nseeds: []\n", "no seeds to run: give --seeds, e.g. [0], or seeds in"),
    ],
)
def test_a_malformed_experiment_file_is_one_line(text, message, tmp_path, capsys):
    """Broken YAML was a traceback; a wrong type passed the check and failed later, far from the file."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SystemExit) as stopped:
        main(["experiment", str(bad)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("nla experiment: error: ") and message in err and err.count("\n") == 1, err


def test_an_empty_protocol_is_no_overlay(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("name: x\nbase: []\nmethods: {CE: []}\nprotocols:\n  clean:\n")
    assert Experiment.load(path).protocols == {"clean": []}


def test_shipped_experiment_files_are_valid():
    for path in (CONFIGS / "experiments").glob("*.yaml"):
        experiment = Experiment.load(path)
        assert experiment.cells(), path


def test_the_tables_read_any_last_k(tmp_path):
    """The runner reads the mean of the last k epochs whatever k the run's summary used (the typed summary)."""
    from nla.experiment import collect, write_tables
    from nla.records import Evaluation, RunSummary

    spec = {"name": "k3", "base": [str(CONFIGS / "rafdb.yaml")], "methods": {"CE": []}, "output_dir": str(tmp_path)}
    (tmp_path / "k3.yaml").write_text(yaml.safe_dump(spec))
    experiment = Experiment.load(tmp_path / "k3.yaml")
    records = [Evaluation(a, a, {"x": a}, {"x": 1}, [[1]], 1, epoch=k) for k, a in enumerate([0.1, 0.2, 0.4, 0.6])]
    finish_by_hand(experiment, "clean", "CE", 0, summary=RunSummary(records, last_k=3))
    rows = {r["evaluation"]: r for r in collect(experiment)}
    assert rows["mean_last"]["acc"] == pytest.approx((0.2 + 0.4 + 0.6) / 3) and rows["mean_last"]["epoch"] == [1, 2, 3]
    markdown, _ = write_tables(experiment, list(rows.values()))
    assert "mean of the last 3 epochs" in markdown.read_text()


@pytest.mark.slow
def test_a_grid_runs_as_cluster_jobs_through_submitit(tmp_path, rafdb_root, capsys):
    """--launcher slurm's path, on submitit's local executor (no cluster here): the same cells, records and tables."""
    config = write_experiment(tmp_path, rafdb_root)
    main(["experiment", config, "--launcher", "submitit_local", "--methods", "[CE]", "--protocols", "[clean]"])
    experiment = Experiment.load(config)
    run_dir = experiment.run_dir("clean", "CE", 0)
    (attempt,) = attempts(run_dir)
    assert attempt["exit_code"] == 0 and attempt["job_id"] and (run_dir / "summary.json").is_file()
    assert "epoch 2/2" in (run_dir / "fit.log").read_text()  # the job's output, where a local run's goes
    assert list((experiment.root / "cluster").glob("*_log.out"))  # submitit's own logs, apart
    assert "1 of the 4 cells finished" in (experiment.root / "results.md").read_text()  # the grid of the file
    assert "[done]    CE / clean / seed 0" in capsys.readouterr().out


def test_cluster_settings_without_a_cluster_launcher_are_refused(tmp_path, rafdb_root, capsys):
    config = write_experiment(tmp_path, rafdb_root)
    with pytest.raises(SystemExit):
        main(["experiment", config, "--cluster", "{slurm_partition: gpu}"])
    assert "sets a cluster's jobs; give --launcher slurm too" in capsys.readouterr().err
