"""``nla compare``: the runs' tables side by side, from their summary.json files alone."""

import csv
import json
import shutil

import pytest

from nla.cli import main


def test_compare_prints_last_best_and_mean_of_the_last_epochs(trained_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    main(["compare", str(trained_run), str(other)])
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| run | evaluation | epoch | acc | mean_acc | Surprise |") and len(table) == 2 + 2 * 3
    assert "mean of the last 5 epochs" in table[4] and "| 1-2 |" in table[4]  # epochs as nla fit counts them
    assert not capsys.readouterr().err  # the same data: nothing to warn of
    main(["compare", str(trained_run), "--csv", "--evaluations", "[best]"])
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    summary = json.loads((trained_run / "summary.json").read_text())
    assert len(rows) == 1 and float(rows[0]["acc"]) == pytest.approx(100 * summary["best"]["acc"], abs=0.01)
    elsewhere = json.loads((other / "summary.json").read_text())  # validated on FER+, whose classes are lower case
    elsewhere["validation"].update(data="FERPlusDataModule", split="valid", images=3199)
    for record in [*elsewhere["epochs"], elsewhere["last"], elsewhere["best"]]:
        record["class_acc"] = {name.lower(): value for name, value in record["class_acc"].items()}
    (other / "summary.json").write_text(json.dumps(elsewhere))
    main(["compare", str(trained_run), str(other)])
    out, err = capsys.readouterr()
    assert out.splitlines()[0].count("urprise") == 1  # Surprise and surprise are one column
    assert "validated on different data" in err and "FERPlusDataModule valid 3199" in err
    (tmp_path / "cut.json").write_text('{"epochs": [\n')
    for wrong, message in (
        ([str(tmp_path / "nowhere")], "no summary.json"),
        ([str(tmp_path / "cut.json")], "cut.json:2: not valid JSON"),
        (
            [str(trained_run), "--evaluations", "[last, worst]"],
            "expected one of 'last', 'best', 'mean_last'; got worst",
        ),
    ):
        with pytest.raises(SystemExit):
            main(["compare", *wrong])
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_compare_refuses_a_run_given_twice_and_no_evaluations(trained_run, capsys):
    """`compare run run` printed each row twice; `--evaluations []` printed an empty table."""
    for args, message in (
        ([str(trained_run), str(trained_run / "summary.json")], "given twice: each run is a row once"),
        ([str(trained_run), "--evaluations", "[]"], "--evaluations is empty"),
    ):
        with pytest.raises(SystemExit):
            main(["compare", *args])
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
