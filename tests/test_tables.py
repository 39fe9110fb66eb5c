"""A results folder's files damaged by hand: one line naming the file, line, column and value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdsearch.cli import main
from kdsearch.config import config_from_dict, dump_config
from kdsearch.selection import read_searched
from kdsearch.final_record import FINAL_FORMAT, read_final
from kdsearch.results import ReportError, SearchError, check_run
from kdsearch.tables import REQUIRED_PROGRESS, TableError, read_table

HEADER = "phase,trial_id,status,stopped_early,diverged,epochs,val_acc,val_loss,lr,width\n"
GOOD = "distill,76e61933,TERMINATED,0,0,4,0.95,nan,0.003,16\n"


@pytest.mark.parametrize("row, message", [
    ("distill,a1,TERMINATED,0,0,4,abc,0.5,0.003,16", "line 3: val_acc = 'abc' is not a finite"),
    ("distill,a1,TERMINATED,0,0,4,nan,0.5,0.003,16", "line 3: val_acc = 'nan' is not a finite"),
    ("distill,a1,TERMINATED,x,0,4,0.9,0.5,0.003,16", "line 3: stopped_early = 'x' is not 0 or 1"),
    ("distill,a1,TERMINATED,0,0,4.5,0.9,0.5,0.003,16", "line 3: epochs = '4.5' is not a whole"),
    ("distill,a1,TERMINATED,0,0,4,0.9,0.5,,-3", "line 3: width = '-3' is not a whole"),
    ("distill,a1,TERMINATED,0,0,4,0.9,0.5,abc,16", "line 3: lr = 'abc' is not a finite"),
    (",a1,TERMINATED,0,0,4,0.9,0.5,0.003,16", "line 3: phase is empty"),
    ("distill,a1,TERMINATED,0,0,4,0.9,0.5,0.003,16,extra", "line 3 has more cells"),
    # a misspelt status read as an interrupted trial, a misspelt phase as neither kind
    ("distill,a1,TERMINATD,0,0,4,0.9,0.5,0.003,16", "line 3: status = 'TERMINATD' is not one of"),
    ("distil,a1,TERMINATED,0,0,4,0.9,0.5,0.003,16", "line 3: phase = 'distil' is not distill or"),
])
def test_a_damaged_trials_table_is_named_by_line_column_and_value(
        tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "trials.csv"
    path.write_text(HEADER + GOOD + row + "\n")
    with pytest.raises(TableError) as info:
        read_table(path)
    assert str(path) in str(info.value) and message in str(info.value), info.value
    assert "\n" not in str(info.value)


def test_a_whole_table_reads_and_text_that_is_not_utf8_or_lacks_a_column_does_not(
        tmp_path: Path) -> None:
    path = tmp_path / "trials.csv"
    path.write_text(HEADER + GOOD)
    assert read_table(path)[0]["trial_id"] == "76e61933"  # and a NaN loss is a loss
    assert read_table(tmp_path / "missing.csv") == []
    path.write_bytes(b"phase,trial_id,status\n\xff\xfe\x00garbage\n")
    with pytest.raises(TableError, match="not UTF-8"):
        read_table(path)
    path.write_text("phase,status\ndistill,TERMINATED\n")
    with pytest.raises(TableError, match="no column trial_id"):
        read_table(path)
    progress = tmp_path / "progress.csv"
    progress.write_text("phase,trial_id,epoch,val_acc\ndistill,a1,one,0.9\n")
    with pytest.raises(TableError, match="epoch = 'one'"):
        read_table(progress, REQUIRED_PROGRESS)
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(TableError, match="cannot be read"):
        read_table(tmp_path / "dir.csv")


@pytest.mark.parametrize("run, message", [
    ([], "not a JSON object"),
    ({"search": "x"}, "search = 'x' is not an object"),
    ({"search": {"status": "started", "wall_seconds": "abc"}}, "search.wall_seconds = 'abc'"),
    ({"hardware": {"cpus": "abc"}}, "hardware.cpus = 'abc' is not a number"),
    ({"phases": {"distill": "finished"}}, "phases.distill = 'finished'"),
    ({"storage_is_results_dir": "yes"}, "storage_is_results_dir = 'yes' is not true or false"),
])
def test_run_json_of_the_wrong_shape_is_refused(run: object, message: str) -> None:
    with pytest.raises(SearchError, match=message):
        check_run(run, Path("results/x/run.json"))
    assert check_run({"search": {"status": "finished", "wall_seconds": 3.5},
                      "hardware": {"cpus": 2, "gpus": 0, "nodes": 1}}, Path("run.json"))


def _final(**edit: object) -> dict:
    row = {"kind": "distilled", "tuned": True, "best": True, "trial_id": "a1", "val_acc": 0.9,
           "search_epochs": 4, "width": 16, "params": 1000, "epochs": 4, "settings": {},
           "spec": {}, "alpha": 0.3, "mean": 0.9, "std": 0.01, "diverged": 0,
           "test_accs": [0.9, None]}
    return {"format": 1, "seeds": [0, 1], "teacher": {"params": 10, "test_acc": 0.97,
                                                      "val_acc": 0.96},
            "data": {"train": 1, "val": 1, "test": 1}, "rows": [row], **edit}


@pytest.mark.parametrize("edit", [{"rows": "abc"}, {"rows": [1, 2]}, {"teacher": "abc"},
                                  {"data": "abc"}, {"seeds": "0"},
                                  {"rows": [{"kind": "distilled"}]},
                                  {"rows": [{**_final()["rows"][0], "tuned": None}]}])
def test_a_final_json_of_the_wrong_shape_is_retrained_not_read(tmp_path: Path,
                                                              edit: dict) -> None:
    (tmp_path / "final.json").write_text(json.dumps({**_final(**edit), "format": FINAL_FORMAT}))
    assert read_final(tmp_path) is None
    (tmp_path / "final.json").write_text(json.dumps({**_final(), "format": FINAL_FORMAT}))
    assert read_final(tmp_path) is not None


def test_kdsearch_report_of_a_damaged_table_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_from_dict({"name": "damaged", "search": {"space": {
        "lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-1}}}})
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    (tmp_path / "run.json").write_text('{"search": {"status": "finished"}}')
    (tmp_path / "trials.csv").write_text(HEADER + GOOD.replace("0.95", "abc"))
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv in (["report", str(tmp_path), "--no-retrain", "--in-process"],
                 ["report", str(tmp_path), "--in-process"], ["resume", str(tmp_path)]):
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "trials.csv: line 2: val_acc = 'abc'" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_trials_table_without_a_searched_column_is_refused(tmp_path: Path) -> None:
    cfg = config_from_dict({"name": "x", "search": {"space": {
        "lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-1},
        "batch_size": {"distribution": "choice", "values": [16, 32]}}}})
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    (tmp_path / "trials.csv").write_text(HEADER + GOOD)  # no batch_size column
    with pytest.raises(ReportError, match=r"line 2: no batch_size, which config.yaml searches"):
        read_searched(tmp_path)


def test_a_folder_where_the_report_writes_a_file_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = config_from_dict({"name": "blocked", "teacher": {"epochs": 1, "width": 32},
                            "training": {"epochs": 2}, "report": {"seeds": 2},
                            "search": {"space": {"lr": {"distribution": "loguniform",
                                                        "low": 1e-3, "high": 1e-1}}}})
    folder = tmp_path / "blocked"
    folder.mkdir()
    (folder / "config.yaml").write_text(dump_config(cfg))
    (folder / "trials.csv").write_text(
        "phase,trial_id,status,stopped_early,diverged,epochs,val_acc,lr\n"
        "distill,a1,TERMINATED,0,0,2,0.9,0.003\nbaseline,b1,TERMINATED,0,0,2,0.8,0.003\n")
    (folder / "summary.json").mkdir()  # where the report writes a file
    assert main(["report", str(folder), "--in-process"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.startswith("kdsearch:")]
    assert len(err) == 1 and "summary.json" in err[0] and "Traceback" not in err[0], err


def test_a_config_edited_away_from_its_search_is_refused(tmp_path: Path) -> None:
    """A width dropped from config.yaml would retrain a width-64 trial's settings at the
    config's width; another dataset would compare against another teacher."""
    from kdsearch.teacher import teacher_key

    space = {"lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-1}}
    cfg = config_from_dict({"name": "x", "search": {"space": space}})
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    (tmp_path / "trials.csv").write_text(HEADER + GOOD)  # its trials searched width
    with pytest.raises(ReportError, match=r"line 2: the trial searched width, which "
                                          r"config.yaml does not"):
        read_searched(tmp_path)
    cfg = config_from_dict({"name": "x", "search": {"space": {
        **space, "width": {"distribution": "choice", "values": [16, 32]}}}})
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    (tmp_path / "run.json").write_text(json.dumps({"teacher": {"key": teacher_key(cfg)}}))
    assert read_searched(tmp_path)[1][0].trial_id == "76e61933"
    (tmp_path / "run.json").write_text(json.dumps({"teacher": {"key": "0123456789abcdef"}}))
    with pytest.raises(ReportError, match="dataset or teacher settings differ"):
        read_searched(tmp_path)


def test_a_damaged_progress_table_is_refused_before_final_json_is_rewritten(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_from_dict({"name": "damaged", "search": {"space": {
        "lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-1},
        "width": {"distribution": "choice", "values": [16, 32]}}}})
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    (tmp_path / "trials.csv").write_text(HEADER + GOOD)
    (tmp_path / "progress.csv").write_text("phase,trial_id,epoch,val_acc\ndistill,a1,1,nan\n")
    (tmp_path / "final.json").write_text('{"format": "an older one"}')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["report", str(tmp_path), "--no-retrain", "--in-process"]) == 2
    assert "progress.csv: line 2: val_acc = 'nan'" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
