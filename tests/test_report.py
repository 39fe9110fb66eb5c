"""The report: a real small search on digits, the final evaluation, the files and their numbers."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import kdsearch.data
import kdsearch.final
import kdsearch.inputs
from kdsearch.final import evaluate_final
from kdsearch.inputs import Inputs
from kdsearch.plots import (PLOT_ALPHA, PLOT_BEST_SO_FAR, PLOT_IMPORTANCE, PLOT_LATENCY,
                           PLOT_TEMPERATURE, PLOT_TEST_ACC, PLOTS)
from kdsearch.report import make_report
from kdsearch.search import run_search
from kdsearch.stats import compare, unpack_correct
from kdsearch.tables import TrialRow, read_table

QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"
# a small search: two widths, a small quick teacher, 4-epoch students that ASHA may stop at 2
SMALL = ["search.num_samples=4", "search.baseline_num_samples=3", "training.epochs=4",
         "search.grace_period=2", "teacher.epochs=3", "teacher.width=256",
         "search.space.width.values=[8, 32]", "search.seed=1"]
WRITTEN = ("report.md", "summary.json", "summary.csv", "final.json", "importances.json",
           "latency.json")
# the small search has too few trials for importances: every plot but theirs
DRAWN = tuple(p for p in PLOTS if p != PLOT_IMPORTANCE)
_REAL_LOAD_TEST = kdsearch.data.load_test


def _guard_hook(folder: str):
    """A Ray worker set-up hook: it leaves a file per worker, and a call of load_test in a
    worker leaves another file and fails."""

    def hook() -> None:
        import os

        import kdsearch.data

        def refuse(*args, **kwargs):
            Path(folder, "load_test-called").write_text("load_test was called in a Ray worker")
            raise AssertionError("the search read the test split")

        kdsearch.data.load_test = refuse
        Path(folder, f"worker-{os.getpid()}").touch()

    return hook


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One small finished search, shared by the module, run with load_test forbidden.

    The driver's load_test (both names) raises and records the call; Ray's workers get the same
    refusal through a set-up hook. The search itself must not notice.
    """
    import ray
    import ray.cloudpickle

    guard = tmp_path_factory.mktemp("guard")
    driver_calls: list = []

    def refuse(*args, **kwargs):
        driver_calls.append(args)
        raise AssertionError("the search read the test split")

    # module fixtures run before conftest's per-test environment: set the same cache here
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDSEARCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kdsearch-cache"))
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setattr(kdsearch.data, "load_test", refuse)
        mp.setattr(kdsearch.final, "load_test", refuse)
        # the hook is a closure of this test module, which workers cannot import: send it whole
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"worker_process_setup_hook": _guard_hook(str(guard))})
        try:
            root = tmp_path_factory.mktemp("results")
            result = run_search(QUICKSTART, overrides=SMALL, results_dir=root, report=False)
        finally:
            ray.shutdown()
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    return {"dir": result.results_dir, "guard": guard, "driver_calls": driver_calls}


@pytest.fixture(scope="module")
def search_dir(search: dict) -> Path:
    return search["dir"]


@pytest.fixture(scope="module")
def reported(search_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of that search, written once; returns the results folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDSEARCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kdsearch-cache"))
        trials_before = (search_dir / "trials.csv").read_bytes()
        path = make_report(search_dir)
        assert path == search_dir / "report.md"
        assert (search_dir / "trials.csv").read_bytes() == trials_before
    return search_dir


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("distill", "baseline"))
    return dst


# --------------------------------------------------------------------------- files
@pytest.mark.slow  # a real Ray search (shared by the module)
def test_report_writes_every_file_without_absolute_paths(reported: Path) -> None:
    for name in (*WRITTEN, *DRAWN):
        assert (reported / name).is_file(), name
    assert not (reported / PLOT_IMPORTANCE).exists()
    report = (reported / "report.md").read_text()
    for name in DRAWN:
        assert f"]({name})" in report  # relative image links
    assert f"]({PLOT_IMPORTANCE})" not in report
    assert "| distilled | 4 | too few trials (fewer than 10)" in report
    # what the p-value covers, and what it does not
    assert "not the search's own luck" in " ".join(report.split())
    for name in WRITTEN:
        text = (reported / name).read_text()
        assert str(reported) not in text and str(reported.parent) not in text, name
    final = json.loads((reported / "final.json").read_text())
    seeds = final["seeds"]
    assert seeds == [0, 1, 2]
    for row in final["rows"]:
        assert row["kind"] in ("distilled", "baseline")
        assert len(row["test_accs"]) == len(seeds)
        assert row["params"] > 0 and row["epochs"] == 4
        assert row["alpha"] == 1.0 if row["kind"] == "baseline" else row["alpha"] < 1.0
    assert 0.5 < final["teacher"]["test_acc"] <= 1.0
    assert final["data"]["test"] == 359  # digits' fixed 20% test split


@pytest.mark.slow  # a real Ray search (shared by the module)
def test_report_trials_csv_keeps_all_trials(reported: Path) -> None:
    rows = read_table(reported / "trials.csv")
    assert {r["phase"] for r in rows} == {"distill", "baseline"}
    assert len([r for r in rows if r["phase"] == "distill"]) == 4
    assert len([r for r in rows if r["phase"] == "baseline"]) == 3
    cost = _summary(reported)["search"]
    assert cost["phases"]["distill"]["trials"] == 4
    assert cost["phases"]["distill"]["planned"] == 4
    assert cost["total"]["trials"] == len(rows)
    epochs = read_table(reported / "progress.csv")
    assert cost["total"]["trial_epochs"] == len(epochs)


# --------------------------------------------------------------------------- numbers
_NUM = r"[+-]?\d[\d,]*\.?\d*"


def _close(text: str, value: float | None, scale: float, decimals: int) -> bool:
    if value is None:
        return text.strip() == "n/a"
    return abs(float(text) - scale * value) <= 0.5 * 10 ** -decimals + 1e-9


def _pm(cell: str) -> tuple[str, str]:
    m = re.fullmatch(rf"\s*({_NUM}) ± ({_NUM})%.*", cell)
    assert m, cell
    return m.group(1), m.group(2)


@pytest.mark.slow  # a real Ray search (shared by the module)
def test_report_numbers_equal_summary_json(reported: Path) -> None:
    s = _summary(reported)
    final = json.loads((reported / "final.json").read_text())
    lines = (reported / "report.md").read_text().splitlines()
    assert lines[0] == f"**{s['answer_text']}**"  # the answer comes first
    assert f"\n{s['headline']}\n" in "\n".join(lines)  # the verdicts' sentence, below

    # summary.json's statistics are those of final.json's per-seed accuracies
    for c in s["widths"]:
        for kind in ("distilled", "baseline"):
            if c[f"{kind}_width"] is None:
                continue
            row = next(r for r in final["rows"]
                       if r["kind"] == kind and r["width"] == c[f"{kind}_width"])
            assert c[f"{kind}_accs"] == row["test_accs"]
            # each seed's per-example results are its accuracy, example by example
            n = final["data"]["test"]
            for acc, packed in zip(row["test_accs"], row["test_correct"]):
                assert unpack_correct(packed, n).sum() / n == acc
            assert c[f"{kind}_mean"] == pytest.approx(np.mean(row["test_accs"]), abs=1e-12)
            assert c[f"{kind}_std"] == pytest.approx(np.std(row["test_accs"], ddof=1),
                                                     abs=1e-12)

    # the per-width table: every number equals summary.json's, as rounded for display
    start = lines.index("## Distilled against alone, width by width") + 6
    table = [ln for ln in lines[start:start + len(s["widths"])]]
    assert len(table) == len(s["widths"])
    for line, c in zip(table, s["widths"]):
        cells = [x.strip() for x in line.strip("|").split("|")]
        assert int(cells[0]) == (c["distilled_width"] or c["baseline_width"])
        assert int(cells[1].replace(",", "")) == (c["distilled_params"] or c["baseline_params"])
        if c["compression"] is not None:
            assert _close(cells[2].rstrip("×").replace(",", ""), c["compression"], 1,
                          0 if c["compression"] >= 10 else 1)
        for cell, kind in ((cells[3], "distilled"), (cells[4], "baseline")):
            if c[f"{kind}_mean"] is None:  # a width where only the other kind finished
                assert cell.startswith("n/a")
                continue
            mean, std = _pm(cell)
            assert _close(mean, c[f"{kind}_mean"], 100, 2)
            assert _close(std, c[f"{kind}_std"], 100, 2)
        assert _close(cells[5], c["difference"], 100, 2)
        # the seed test and the test-set comparison: raw p, then Holm-adjusted over the widths
        for cell, raw, held in ((cells[6], c["p_value"], c["p_value_holm"]),
                                (cells[8], c["test_p_value"], c["test_p_value_holm"])):
            if raw is None:
                assert cell in ("n/a", "no spread", "one seed"), cell
                continue
            shown = re.match(rf"({_NUM}(?:e-\d+)?) \(({_NUM}(?:e-\d+)?)\)", cell)
            assert shown, cell
            for text, value in zip(shown.groups(), (raw, held)):
                if value < 0.01:  # shown as 3.2e-04
                    assert float(text) == pytest.approx(value, rel=0.05)
                else:
                    assert _close(text, value, 1, 2)
        low, high = re.fullmatch(rf"({_NUM}) to ({_NUM})", cells[7]).groups()
        assert _close(low, c["test_ci_low"], 100, 2) and _close(high, c["test_ci_high"], 100, 2)
        assert cells[9] == {"beats": "distilled ahead", "not_significant": "none",
                            "does_not_beat": "baseline ahead" if c["significant"] else "none"
                            }[c["verdict"]]
        assert _close(cells[10].rstrip("%"), c["gap_recovered"], 100, 0)
        # the trials behind each side of the row, counted from trials.csv
        trials = read_table(reported / "trials.csv")
        width = str(c["distilled_width"] or c["baseline_width"])
        counts = []
        for phase in ("distill", "baseline"):
            ran = [r for r in trials if r["phase"] == phase and r["width"] == width
                   and r["status"] == "TERMINATED" and r["diverged"] == "0"]
            counts.append(f"{len(ran)} ({sum(r['stopped_early'] == '0' for r in ran)})")
        assert cells[11] == " / ".join(counts)
        assert (c["distilled_trials"], c["baseline_trials"]) == tuple(
            int(x.split()[0]) for x in counts)

    # the headline: distilled, baseline and teacher accuracies of the best settings
    b = s["best"]
    pairs = re.findall(rf"({_NUM}) ± ({_NUM})%", s["headline"])
    assert len(pairs) == 2
    for (mean, std), kind in zip(pairs, ("distilled", "baseline")):
        assert _close(mean, b[f"{kind}_mean"], 100, 2) and _close(std, b[f"{kind}_std"], 100, 2)
    teacher = re.search(rf"teacher ({_NUM})%", s["headline"]).group(1)
    assert _close(teacher, s["teacher"]["test_acc"], 100, 2)
    diff = re.search(rf"\(({_NUM}) points", s["headline"]).group(1)
    assert _close(diff, b["difference"], 100, 2)
    expected = {"beats": "Distillation beats the baseline:",
                "not_significant": "Distillation does not beat the baseline significantly:",
                "does_not_beat": "The baseline beats distillation:" if b["significant"]
                else "Distillation does not beat the baseline:"}[b["verdict"]]
    assert s["headline"].startswith(expected)

    # summary.csv carries the same unrounded values
    with open(reported / "summary.csv", newline="") as f:
        header = next(csv.reader(f))
        f.seek(0)
        rows = list(csv.DictReader(f))
    assert len(header) == len(set(header))
    assert [r["comparison"] for r in rows] == ["best"] + ["width"] * len(s["widths"])
    for r, c in zip(rows, [b, *s["widths"]]):
        for key in ("distilled_mean", "baseline_mean", "difference", "teacher_acc"):
            assert float(r[key]) == c[key]
        for key in ("p_value", "test_p_value", "test_ci_low", "test_ci_high"):
            assert (r[key] == "") == (c[key] is None)
            if c[key] is not None:
                assert float(r[key]) == c[key]


@pytest.mark.slow  # a real Ray search (shared by the module)
def test_the_answer_opens_the_report_and_every_number_in_it_is_summary_jsons(reported: Path
                                                                           ) -> None:
    s = _summary(reported)
    answer, text = s["answer"], s["answer_text"]
    assert (reported / "report.md").read_text().startswith(f"**{text}**")
    needed = s["teacher"]["test_acc"] - answer["target"]["value"] / 100
    assert answer["target"] == {"kind": "within_teacher", "value": 1.0}
    assert answer["needed"] == pytest.approx(needed, abs=1e-12)
    assert f"within 1.0 point of the teacher ({100 * s['teacher']['test_acc']:.2f}%)" in text
    # each side's standing against the target is the rule applied to its own bound
    sides = [(c, k) for c in s["widths"] for k in ("distilled", "baseline")
             if c[f"{k}_width"] is not None]
    for c, kind in sides:
        lower, mean = c[f"{kind}_lower"], c[f"{kind}_mean"]
        expected = ("meets" if lower is not None and lower > needed else
                    "likely" if mean > needed else "misses")
        assert c[f"{kind}_meets"] == expected
        assert c[f"{kind}_macs"] > 0 and c[f"{kind}_latency_ms"] > 0
    for kind in ("distilled", "baseline"):
        pick = answer[kind]
        meeting = [c for c, k in sides if k == kind and c[f"{kind}_meets"] == "meets"]
        if not meeting:
            assert pick is None
            continue
        smallest = min(meeting, key=lambda c: c[f"{kind}_params"])
        assert pick["width"] == smallest[f"{kind}_width"]
        if kind == "distilled":  # its numbers in the sentence, as rounded for display
            mean, std = _pm(re.search(rf"({_NUM} ± {_NUM})%", text).group(1) + "%")
            assert _close(mean, pick["mean"], 100, 2) and _close(std, pick["std"], 100, 2)
            assert f"{pick['params']:,} parameters" in text
            low = re.search(rf"at least ({_NUM})% at 95%", text).group(1)
            assert _close(low, pick["lower"], 100, 2)
    if answer["distilled"] is None and answer["baseline"] is None:
        assert text.startswith("No student is shown within 1.0 point of the teacher")


@pytest.mark.slow  # a real Ray search (shared by the module)
def test_kdsearch_latency_rewrites_the_latency_columns(reported: Path, tmp_path: Path) -> None:
    from kdsearch.cli import main

    folder = _copy(reported, tmp_path / "copy")
    before = json.loads((folder / "latency.json").read_text())
    assert main(["latency", str(folder), "--threads", "2"]) == 0
    after = json.loads((folder / "latency.json").read_text())
    assert after["threads"] == 2 and after["created"] > before["created"]
    s = _summary(folder)
    assert s["latency"]["threads"] == 2
    for t in after["timings"]:
        c = next(c for c in s["widths"] if c[f"{t['kind']}_width"] == t["width"])
        assert c[f"{t['kind']}_latency_ms"] == t["batch1_ms"]
    assert "2 torch threads" in (folder / "report.md").read_text()
    # a report that retrains nothing keeps the user's own timings
    assert main(["report", str(folder), "--no-retrain"]) == 0
    assert json.loads((folder / "latency.json").read_text()) == after
    assert "2 torch threads" in (folder / "report.md").read_text()


@pytest.mark.slow  # a real Ray search (shared by the module)
def test_a_report_without_saved_students_is_written_not_timed(reported: Path,
                                                              tmp_path: Path) -> None:
    """Every retraining diverged, or its students were deleted: the report is written all the
    same, says it was not timed, and drops a latency.json that timed students now gone."""
    from kdsearch.cli import main

    folder = _copy(reported, tmp_path / "copy")
    shutil.rmtree(folder / "students")
    (folder / "report.md").unlink()
    assert main(["report", str(folder), "--no-retrain"]) == 0
    assert "Not timed" in (folder / "report.md").read_text()
    assert not (folder / "latency.json").exists()


@pytest.mark.slow  # a real Ray search (shared by the module)
def test_the_answers_student_exports_to_onnx_that_onnxruntime_runs(reported: Path,
                                                                   tmp_path: Path) -> None:
    """With a target the small search meets, `kdsearch export --answer` writes the answer's
    student; onnxruntime's logits are within 1e-4 of torch's; int8 reports its accuracy."""
    import yaml

    from kdsearch.cli import main
    from kdsearch.export import export_student
    from kdsearch.report import write_report

    folder = _copy(reported, tmp_path / "copy")
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    cfg["report"]["target"] = {"accuracy": 50.0}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    write_report(folder)
    answer = _summary(folder)["answer"]
    assert answer["distilled"] is not None
    assert main(["export", str(folder), "--answer", "--format", "onnx"]) == 0
    done = export_student(folder, format="onnx", quantize="int8", out=tmp_path / "a.onnx")
    assert done.width == answer["distilled"]["width"] and done.max_abs_diff <= 1e-4
    assert (folder / "export" / f"distilled-w{done.width}-seed0.onnx").is_file()
    assert {q.kind for q in done.quantized} <= {"distilled", "baseline"} and done.quantized
    assert all(0 < q.int8_acc <= 1 for q in done.quantized)


@pytest.mark.slow  # a real Ray search (shared by the module)
def test_every_field_of_summary_json_is_documented(reported: Path) -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    s = _summary(reported)
    keys = {*s, *s["best"], *s["widths"][0], *s["search"], *s["search"]["total"]}
    missing = sorted(k for k in keys if f"`{k}`" not in docs
                     and not k.startswith(("distilled_", "baseline_")))  # named in pairs
    assert missing == []
    with open(reported / "summary.csv", newline="") as f:
        header = next(csv.reader(f))
    assert [c for c in header if f"`{c}`" not in docs and not c.startswith(
        ("distilled_", "baseline_"))] == []


@pytest.mark.slow  # a real Ray search (shared by the module)
def test_a_retraining_out_of_gpu_memory_fails_that_setting_and_seed_alone(
        reported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda.OutOfMemoryError in one retraining (injected on the CPU) is that seed's
    failure, as a diverged loss is: the other seeds and settings are tested, the report
    whole."""
    import torch

    import kdsearch.retrain

    folder = _copy(reported, tmp_path / "oom")
    real = kdsearch.retrain.train_student
    hit: list[int] = []

    def short_of_memory(cfg, data, **kwargs):  # type: ignore[no-untyped-def]
        if cfg.student.width == 8 and cfg.training.alpha < 1 and cfg.training.seed == 1:
            hit.append(cfg.training.seed)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(cfg, data, **kwargs)

    monkeypatch.setattr(kdsearch.retrain, "train_student", short_of_memory)
    make_report(folder)  # in this process; Ray's tasks call the same train_one
    assert hit == [1]
    final = json.loads((folder / "final.json").read_text())
    row = next(r for r in final["rows"] if r["kind"] == "distilled" and r["width"] == 8)
    assert row["test_accs"][1] is None and None not in (row["test_accs"][0], row["test_accs"][2])
    assert row["errors"][1].startswith("out of GPU memory: CUDA out of memory")
    assert (row["failed"], row["diverged"]) == (1, 0)
    assert all(None not in r["test_accs"] for r in final["rows"] if r is not row)
    s = _summary(folder)
    width8 = next(c for c in s["widths"] if c["distilled_width"] == 8)
    assert len(width8["distilled_accs"]) == 2 and width8["distilled_mean"] is not None
    report = (folder / "report.md").read_text()
    assert "- width 8, distilled: " in report and \
        "(1 of 3 seeds failed (out of GPU memory: CUDA out of memory" in report


# --------------------------------------------------------------------------- plots
@pytest.mark.slow  # a real Ray search (shared by the module)
def test_plots_are_pngs_with_the_expected_series(reported: Path) -> None:
    import matplotlib.image

    s = _summary(reported)
    for name in DRAWN:
        data = (reported / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        img = matplotlib.image.imread(reported / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 0  # something was drawn
    plots = s["plots"]
    assert set(plots) == set(DRAWN)

    final = json.loads((reported / "final.json").read_text())
    series = plots[PLOT_TEST_ACC]["series"]
    assert series["distilled"] == sum(r["kind"] == "distilled" for r in final["rows"])
    tuned = sum(r["kind"] == "baseline" and r["tuned"] for r in final["rows"])
    untuned = sum(r["kind"] == "baseline" and not r["tuned"] for r in final["rows"])
    assert series.get("alone (baseline)", 0) == tuned
    assert series.get("alone, untuned", 0) == untuned
    assert any(label.startswith("teacher") for label in series)
    assert any(label.startswith("target") for label in series)
    assert plots[PLOT_LATENCY]["series"]["distilled"] == series["distilled"]

    trials = read_table(reported / "trials.csv")
    done = [r for r in trials if r["phase"] == "distill" and r["status"] == "TERMINATED"
            and r["diverged"] == "0"]
    expected = {f"width {w}": sum(int(r["width"]) == w for r in done)
                for w in sorted({int(r["width"]) for r in done})}
    assert plots[PLOT_TEMPERATURE]["series"] == expected
    assert plots[PLOT_ALPHA]["series"] == expected
    assert plots[PLOT_TEMPERATURE]["xlabel"] == "temperature"

    progress = read_table(reported / "progress.csv")
    assert plots[PLOT_BEST_SO_FAR]["series"] == {
        "distilled": sum(r["phase"] == "distill" for r in progress),
        "baseline": sum(r["phase"] == "baseline" for r in progress)}


# --------------------------------------------------------------------------- statistics
def _welch(a: list[float], b: list[float]) -> float:
    """Welch's two-sided p-value by the textbook formula (Welch-Satterthwaite df)."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(2 * stats.t.sf(abs(t), df))


def test_compare_on_a_hand_made_table() -> None:
    # means 0.98 and 0.95, both std 0.01, 3 seeds: t = 0.03 / sqrt(2e-4 / 3) = 3.674, df = 4
    c = compare([0.97, 0.98, 0.99], [0.94, 0.95, 0.96], 0.99)
    assert c.distilled_mean == pytest.approx(0.98) and c.baseline_mean == pytest.approx(0.95)
    assert c.distilled_std == pytest.approx(0.01) and c.baseline_std == pytest.approx(0.01)
    assert c.difference == pytest.approx(0.03)
    assert c.p_value == pytest.approx(2 * stats.t.sf(0.03 / math.sqrt(2e-4 / 3), 4))
    assert c.p_value == pytest.approx(0.02131, abs=1e-5)
    assert c.gap_recovered == pytest.approx(0.75)  # (0.98 - 0.95) / (0.99 - 0.95)
    assert c.teacher_acc == 0.99 and c.distilled_n == c.baseline_n == 3

    # unequal sizes and variances: Welch's df, not Student's
    d, b = [0.90, 0.92, 0.97, 0.95], [0.91, 0.93]
    c = compare(d, b, 0.99)
    assert c.p_value == pytest.approx(_welch(d, b), rel=1e-9)
    student = stats.ttest_ind(d, b, equal_var=True).pvalue
    assert abs(c.p_value - student) > 1e-3
    assert c.gap_recovered == pytest.approx((0.935 - 0.92) / (0.99 - 0.92))

    # distillation behind the baseline: a negative difference and a negative fraction
    c = compare([0.90, 0.91], [0.92, 0.94], 0.98)
    assert c.difference == pytest.approx(-0.025)
    assert c.gap_recovered == pytest.approx(-0.025 / (0.98 - 0.93))


def test_compare_undefined_cases() -> None:
    c = compare([0.9], [0.8], 0.95)  # one seed: no std, no test
    assert c.distilled_std is None and c.p_value is None
    assert c.gap_recovered == pytest.approx(0.1 / 0.15)
    c = compare([0.9, 0.9], [0.8, 0.8], 0.95)  # no variance at all: no test
    assert c.distilled_std == 0 and c.p_value is None
    c = compare([0.9, 0.92], [0.95, 0.96], 0.94)  # the teacher below the baseline: no gap
    assert c.gap_recovered is None
    assert compare([0.9, 0.92], [0.95, 0.96], None).gap_recovered is None


# --------------------------------------------------------------------------- search states
@pytest.mark.slow  # a real Ray search (shared by the module)
def test_report_of_an_interrupted_search_names_the_incomplete_trials(
        reported: Path, tmp_path: Path) -> None:
    """A copy of the folder edited as a kill leaves it: a trial RUNNING, a phase 'started'."""
    folder = _copy(reported, tmp_path / "elsewhere" / "copied")
    best = _summary(reported)["best"]["distilled_trial"]
    rows = read_table(folder / "trials.csv")
    pending = next(r for r in rows if r["phase"] == "baseline")
    for r in rows:
        if r["trial_id"] == best:
            r["status"] = "RUNNING"
        if r is pending:
            r["status"], r["val_acc"], r["epochs"] = "PENDING", "", "0"
    with open(folder / "trials.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run = json.loads((folder / "run.json").read_text())
    run["search"]["status"] = "started"  # as a killed search leaves it
    (folder / "run.json").write_text(json.dumps(run))

    make_report(folder, retrain=False)
    s = _summary(folder)
    report = (folder / "report.md").read_text()
    assert s["complete"] is False and s["incomplete_phases"] == ["distill", "baseline"]
    assert {r["trial_id"] for r in s["incomplete_trials"]} == {best, pending["trial_id"]}
    assert "Incomplete search" in report
    assert f"`{best}` (distilled, RUNNING)" in report
    assert f"`{pending['trial_id']}` (baseline, PENDING)" in report
    # an unfinished trial is never chosen, even the one that was best
    assert s["best"]["distilled_trial"] != best
    assert s["search"]["phases"]["distill"]["incomplete"] == 1
    assert str(tmp_path) not in report


@pytest.mark.slow  # a real Ray search (shared by the module)
def test_report_without_a_baseline_search_trains_an_untuned_one(
        reported: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kdsearch")
    folder = _copy(reported, tmp_path / "nobase")
    config = (folder / "config.yaml").read_text()
    assert "  baseline: true" in config
    (folder / "config.yaml").write_text(config.replace("  baseline: true", "  baseline: false"))
    rows = [r for r in read_table(folder / "trials.csv") if r["phase"] == "distill"]
    with open(folder / "trials.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    make_report(folder, retrain=False)  # reuses the distilled rows, trains the rest
    s = _summary(folder)
    final = json.loads((folder / "final.json").read_text())
    trained = len(final["rows"]) - final["reused"]
    assert (f"final: retraining {trained} settings x {len(final['seeds'])} seeds; reusing "
            f"{final['reused']} unchanged settings of final.json") in caplog.messages
    assert s["baseline_tuned"] is False and "not tuned" in s["baseline_note"]
    assert final["reused"] == sum(r["kind"] == "distilled" for r in final["rows"])
    for c in s["widths"]:
        assert c["baseline_tuned"] is False and c["baseline_trial"] is None
        assert c["baseline_settings"]["lr"] == c["distilled_settings"]["lr"]
        assert c["baseline_settings"]["alpha"] == 1.0
        assert len(c["baseline_accs"]) == 3
    report = (folder / "report.md").read_text()
    assert "the baseline was not tuned" in report.split("## The smallest student")[0].lower()
    assert "(untuned)" in report
    assert "alone, untuned" in s["plots"][PLOT_TEST_ACC]["series"]


# --------------------------------------------------------------------------- the test split
@pytest.mark.slow  # a real Ray search (shared by the module)
def test_only_the_final_evaluation_reads_the_test_split(search: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # the search ran to the end with load_test raising in the driver and in every Ray worker
    guard: Path = search["guard"]
    assert list(guard.glob("worker-*")), "the guard hook never ran in a Ray worker"
    assert not (guard / "load_test-called").exists()
    assert search["driver_calls"] == []
    rows = read_table(search["dir"] / "trials.csv")
    assert rows and all(r["status"] == "TERMINATED" for r in rows)

    # the report's final evaluation reads it, once
    folder = _copy(search["dir"], tmp_path / "copy")
    (folder / "final.json").unlink(missing_ok=True)
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return _REAL_LOAD_TEST(*args, **kwargs)

    monkeypatch.setattr(kdsearch.data, "load_test", counting)
    monkeypatch.setattr(kdsearch.final, "load_test", counting)
    make_report(folder)
    assert len(calls) == 1  # one read of the test split for the whole final evaluation
    trained = json.loads((folder / "final.json").read_text())
    make_report(folder, retrain=False)
    assert len(calls) == 1  # nothing changed: final.json reused, the test split not read again
    reused = json.loads((folder / "final.json").read_text())
    assert (reused["retrained"], reused["reused"]) == (0, len(trained["rows"]))
    # what the reused retrainings cost is kept, not lost to the report that reused them
    assert reused["reused_training_seconds"] > 0
    assert reused["reused_training_seconds"] == pytest.approx(
        sum(r["seconds"] for r in trained["rows"]), abs=0.01)
    assert f"Final evaluation: all {len(trained['rows'])} settings reused from an earlier " \
           f"`final.json` (trained then in " in \
        (folder / "report.md").read_text()
    evaluate_final(folder)
    assert len(calls) == 2


def test_headline_names_the_narrower_widths_where_distillation_wins() -> None:
    from kdsearch.summary import Comparison, headline

    def row(width: int, diff: float, p: float, test_p: float = 0.001, **extra: object
            ) -> Comparison:
        c = {"distilled_width": width, "baseline_width": width, "distilled_params": width * 100,
             "baseline_params": width * 100, "baseline_tuned": True, "distilled_mean": 0.9,
             "distilled_std": 0.01, "baseline_mean": 0.9 - diff, "baseline_std": 0.01,
             "distilled_n": 3, "baseline_n": 3, "difference": diff, "p_value": p,
             "p_value_holm": p, "seed_note": None, "test_p_value": test_p,
             "test_p_value_holm": test_p, "test_ci_low": diff - 0.01,
             "test_ci_high": diff + 0.01, "test_n": 1000, "test_discordant": 40,
             "test_sd": 0.2, "test_note": None, "compression": 100.0, **extra}
        return Comparison.from_json(c, family=3)

    def headline_of(best: Comparison, widths: list[Comparison]) -> str:
        return headline(best, widths, student_model="mlp_student", teacher_acc=0.98,
                        baseline_note="")

    def named(text: str) -> str:
        return text.split("fewer parameters than the teacher.", 1)[1].strip()

    widths = [row(8, 0.0158, 0.04), row(16, 0.0093, 0.3), row(64, -0.001, 0.9)]
    text = headline_of(widths[2], widths)
    assert text.startswith("Distillation does not beat the baseline:")
    assert named(text) == ("Distillation beats the baseline at width 8 (+1.58 points, "
                           "Holm-adjusted p = 0.04 over seeds and 1.0e-03 over the test set) "
                           "(3 widths compared).")
    # nothing to add when no other width wins
    assert named(headline_of(widths[2], widths[1:])) == ""
    # ahead over seeds, but not over the test examples: no verdict
    assert row(8, 0.0158, 0.04, test_p=0.2).decision.verdict == "not_significant"
    # the best comparison spans two widths: the best distilled width's own comparison is named
    across = row(64, -0.001, 0.9, baseline_width=32, baseline_params=3200)
    same = row(64, 0.0065, 0.02)
    text = headline_of(across, [row(32, 0.001, 0.5), same])
    assert text.startswith("Distillation does not beat the baseline:")
    assert named(text).startswith("Distillation beats the baseline at width 64 (+0.65 points")
    # a width compared with an untuned baseline says so; a width the baseline wins is named
    untuned = row(8, 0.0158, 0.04, baseline_tuned=False)
    text = headline_of(widths[2], [untuned, row(30, -0.0055, 0.03), widths[2]])
    assert named(text) == (
        "Distillation beats the baseline at width 8 (+1.58 points, Holm-adjusted p = 0.04 "
        "over seeds and 1.0e-03 over the test set, against an untuned baseline) (3 widths "
        "compared). The baseline beats distillation at width 30 (-0.55 points, Holm-adjusted "
        "p = 0.03 over seeds and 1.0e-03 over the test set) (3 widths compared)."), text


def test_search_state_reads_the_older_per_phase_layout() -> None:
    from kdsearch.results import search_state

    assert search_state({"search": {"status": "started", "wall_seconds": 3.0}}) == {
        "status": "started", "wall_seconds": 3.0}
    old = {"phases": {"distill": {"status": "finished", "wall_seconds": 5.0},
                      "baseline": {"status": "finished", "wall_seconds": 2.5}}}
    assert search_state(old) == {"status": "finished", "wall_seconds": 7.5}
    old["phases"]["baseline"]["status"] = "started"
    assert search_state(old)["status"] == "started"
    assert search_state({}) == {}


@pytest.mark.slow  # a real Ray search (shared by the module)
def test_the_final_evaluation_takes_the_searchs_data_and_teacher_instead_of_loading_them(
        search: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`kdsearch run` hands its data and teacher to the final evaluation: with them, no dataset
    is read and no teacher loaded or trained again, and the test accuracies are the same."""
    from kdsearch.config import default_cache_dir, default_data_dir, load_config
    from kdsearch.data import load_dataset
    from kdsearch.teacher import get_teacher

    folder = _copy(search["dir"], tmp_path / "copy")
    (folder / "final.json").unlink(missing_ok=True)
    cfg = load_config(folder / "config.yaml", [])
    data = load_dataset(cfg.dataset, data_dir=default_data_dir(cfg),
                        cache_dir=default_cache_dir(cfg))
    teacher = get_teacher(cfg, data, cache_dir=default_cache_dir(cfg))

    # a fresh cache: a final evaluation that looks for the teacher trains it there again
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("KDSEARCH_CACHE_DIR", str(cache))
    loads = []

    def counting(*args, **kwargs):
        loads.append(args)
        return load_dataset(*args, **kwargs)

    monkeypatch.setattr(kdsearch.inputs, "load_dataset", counting)
    handed = evaluate_final(folder, inputs=Inputs(data, teacher))
    assert loads == [] and not (cache / "teachers").exists()
    again = evaluate_final(folder)  # what `kdsearch report` does
    assert len(loads) == 1 and list((cache / "teachers").glob(f"{teacher.key}-*/manifest.json"))
    assert [r.test_accs for r in handed.rows] == [r.test_accs for r in again.rows]
    assert handed.teacher == again.teacher

    other = dataclasses.replace(teacher, key="0" * len(teacher.key))
    with pytest.raises(ValueError, match="is not"):
        evaluate_final(folder, inputs=Inputs(data, other))


@pytest.mark.slow  # a real Ray search (shared by the module), then a Ray of its own
def test_kdsearch_report_retrains_as_ray_tasks_and_in_process_on_request(
        search: dict, tmp_path: Path) -> None:
    import os
    import socket

    import ray

    from kdsearch.cli import main

    here = f"{socket.gethostname()}:{os.getpid()}"
    folder = _copy(search["dir"], tmp_path / "copy")
    (folder / "final.json").unlink(missing_ok=True)
    assert main(["report", str(folder)]) == 0
    assert not ray.is_initialized()  # the Ray it started is shut down
    final = json.loads((folder / "final.json").read_text())
    workers = {w for r in final["rows"] for w in r["workers"]}
    assert here not in workers and len(workers) >= 2  # Ray's workers, side by side
    assert (folder / "report.md").is_file()
    assert main(["report", str(folder), "--in-process"]) == 0
    again = json.loads((folder / "final.json").read_text())
    assert {w for r in again["rows"] for w in r["workers"]} == {here}
    # the same models, trained here or in Ray's workers (one thread each, as in the search)
    assert [r["test_accs"] for r in again["rows"]] == [r["test_accs"] for r in final["rows"]]


def test_trial_ids_that_look_like_numbers_are_kept_as_written(tmp_path: Path) -> None:
    """Tune's trial ids are 8 hex digits: "76e61933" reads as a float (inf) and "01234567" as an
    int without its 0. The report must name the trials it retrains as trials.csv wrote them."""
    from kdsearch.config import load_config
    from kdsearch.selection import select_settings

    cfg = load_config(QUICKSTART, ["search.space.width.values=[8, 32]"])

    def row(phase: str, trial_id: str, width: int, val_acc: float) -> dict[str, str]:
        return {"phase": phase, "trial_id": trial_id, "status": "TERMINATED",
                "stopped_early": "0", "diverged": "0", "error": "", "epochs": "40",
                "val_acc": str(val_acc), "node": "10.0.0.1:1e5", "gpu_ids": "",
                "temperature": "4.0" if phase == "distill" else "",
                "alpha": "0.3" if phase == "distill" else "", "lr": "0.003", "width": str(width)}

    rows = [row("distill", "76e61933", 8, 0.95), row("distill", "01234567", 32, 0.97),
            row("distill", "12345678", 32, 0.96), row("baseline", "1e000000", 8, 0.94),
            row("baseline", "00000000", 32, 0.96)]
    chosen = {(s.kind, s.width): s.trial_id
              for s in select_settings(cfg, [TrialRow.from_csv(r) for r in rows]).settings}
    assert chosen == {("distilled", 8): "76e61933", ("distilled", 32): "01234567",
                      ("baseline", 8): "1e000000", ("baseline", 32): "00000000"}

    # the same ids in the Python API's table of all trials
    from kdsearch.search_result import SearchResult
    from kdsearch.tables import write_table

    write_table(tmp_path / "trials.csv", [r for r in rows if r["trial_id"] != "12345678"])
    table = SearchResult(tmp_path, {}, {}, None, None).trials
    assert list(table["trial_id"]) == ["76e61933", "01234567", "1e000000", "00000000"]
    assert list(table["node"]) == ["10.0.0.1:1e5"] * 4 and list(table["val_acc"])[0] == 0.95


def _crafted_report(folder: Path, ran: int, accs: dict[str, list[float | None]], *,
                    teacher: dict | None = None, data: dict | None = None,
                    checkpoint: str | None = None) -> str:
    """report.md of a hand-made search: `epochs` searched in [5, 10], one distilled and one
    baseline trial of budget 5 that ran `ran` epochs, retrained with the given accuracies
    (`teacher`, `data`: final.json's; `checkpoint`: a teacher loaded, not trained)."""
    from kdsearch.config import config_from_dict, dump_config
    from kdsearch.selection import read_searched, select_settings, training_config
    from kdsearch.final_record import FinalRecord
    from kdsearch.report import render
    from kdsearch.stats import mean_std
    from kdsearch.summary import summarize

    cfg = config_from_dict({"name": "own", "training": {"epochs": 10},
                            "teacher": {"checkpoint": checkpoint}, "search": {
        "num_samples": 2, "space": {
            "lr": {"distribution": "loguniform", "low": 0.001, "high": 0.1},
            "epochs": {"distribution": "choice", "values": [5, 10]}}}})
    (folder / "config.yaml").write_text(dump_config(cfg))
    (folder / "run.json").write_text(json.dumps({"search": {"status": "finished",
                                                            "wall_seconds": 12.0}}))
    rows = [dict(phase=p, trial_id=t, status="TERMINATED", stopped_early=int(ran < 5),
                 diverged=0, epochs=ran, epoch_budget=5, val_acc=a, lr=0.01,
                 training_seconds=1.0)
            for p, t, a in [("distill", "aaaa0001", 0.95), ("baseline", "bbbb0001", 0.94)]]
    with open(folder / "trials.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg, read = read_searched(folder)
    final_rows = []
    for s in select_settings(cfg, read).settings:
        c = training_config(cfg, s, 0)
        assert c.training.epochs == 5  # the retraining takes the searched budget
        got = accs[s.kind]
        mean, std = mean_std([a for a in got if a is not None])
        final_rows.append({"kind": s.kind, "tuned": s.tuned, "best": s.best, "width": s.width,
                           "params": 1000, "settings": s.settings,
                           "epochs": c.training.epochs, "alpha": c.training.alpha,
                           "trial_id": s.trial_id, "val_acc": s.val_acc,
                           "search_epochs": s.search_epochs, "seeds": [0, 1, 2],
                           "test_accs": got, "mean": mean, "std": std,
                           "diverged": sum(a is None for a in got)})
    final = {"teacher": teacher or {"test_acc": 0.97, "val_acc": 0.97, "params": 100000},
             "rows": final_rows, "baseline_note": "", "baseline_tuned": True,
             "seeds": [0, 1, 2], "data": data or {"train": 1, "val": 1, "test": 1},
             "device": "cpu",
             "seconds": 1.0, "retrained": 6, "reused": 0}
    summary = summarize(folder, FinalRecord.from_json(final))
    (folder / "summary.json").write_text(json.dumps(summary.to_json()))
    return render(summary)


ACCS: dict[str, list[float | None]] = {"distilled": [0.9, 0.91, 0.905],
                                       "baseline": [0.88, 0.885, 0.87]}


@pytest.mark.parametrize("ran, caution", [(5, False), (3, True)])
def test_the_stopped_early_caution_weighs_a_trial_against_its_own_searched_budget(
        tmp_path: Path, ran: int, caution: bool) -> None:
    """A best trial of searched budget 5 that ran 5 epochs is whole (no caution, although 5 is
    below the budget's top of 10); one that ran 3 was stopped early."""
    report = _crafted_report(tmp_path, ran, ACCS)
    assert ("Caution" in report) is caution
    assert "per_width" not in report  # one width: nothing to share out


@pytest.mark.parametrize("checkpoint, val_acc, warned", [
    ("teacher.pt", 0.95, True),  # 950 of 1,000 against 880 of 1,000: far beyond chance
    ("teacher.pt", 0.89, False),  # within chance
    (None, 0.95, False),  # a teacher kdsearch trained never saw the validation split
])
def test_a_loaded_teacher_far_better_on_validation_than_on_test_is_said(
        tmp_path: Path, checkpoint: str | None, val_acc: float, warned: bool) -> None:
    """A user's teacher trained on all of its `train` rows saw kdsearch's validation split: its
    validation accuracy is then above its test accuracy by more than chance allows."""
    from scipy import stats as scipy_stats

    report = _crafted_report(tmp_path, 5, ACCS, checkpoint=checkpoint,
                             teacher={"test_acc": 0.88, "val_acc": val_acc, "params": 100000},
                             data={"train": 5000, "val": 1000, "test": 1000})
    s = _summary(tmp_path)
    assert ("more than chance allows" in report) is warned
    p = s["teacher"]["val_above_test_p"]
    if checkpoint is None:
        assert p is None
    else:  # the one-sided tail of the hypergeometric distribution, written out
        right = round(val_acc * 1000) + 880
        expected = scipy_stats.hypergeom.sf(round(val_acc * 1000) - 1, 2000, right, 1000)
        assert p == pytest.approx(expected, rel=1e-9) and (p < 0.01) is warned


def test_diverged_retrainings_are_counted_and_a_side_with_none_left_is_no_comparison(
        tmp_path: Path) -> None:
    report = _crafted_report(tmp_path, 5, {"distilled": [0.9, None, 0.905],
                                           "baseline": [None, None, None]})
    assert "\nNo comparison: every retraining of the baseline setting diverged" in report
    # no student meets the target: the closest is named, and why
    assert report.startswith("**No student is shown within 1.0 point of the teacher (97.00%)")
    assert "- width 20, distilled: 90.00, 90.50 (1 of 3 seeds diverged)" in report
    assert "- width 20, baseline: none (3 of 3 seeds diverged)" in report


def test_p_values_never_round_across_the_significance_level_and_one_empty_side_is_no_comparison(
        ) -> None:
    from kdsearch.formatting import fmt_p
    from kdsearch.summary import Comparison, headline

    assert [fmt_p(p) for p in (0.0496, 0.0504, 0.047, 0.3, 0.004)] == [
        "0.0496", "0.0504", "0.047", "0.30", "4.0e-03"]
    c = Comparison.from_json({"distilled_width": 20, "baseline_width": 20,
                              "distilled_params": 1000, "baseline_params": 1000,
                              "baseline_tuned": True, "compression": 100.0,
                              **dataclasses.asdict(compare([0.90, 0.91, 0.905], [], 0.97))})
    assert c.decision.verdict == "no_comparison"
    text = headline(c, [c], student_model="mlp_student", teacher_acc=0.97, baseline_note="")
    assert text.startswith("No comparison: every retraining of the baseline setting diverged")


def test_the_search_cost_counts_each_kind_of_trial_ending() -> None:
    from kdsearch.config import config_from_dict
    from kdsearch.summary import search_cost

    cfg = config_from_dict({"search": {"space": {
        "lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-1}}}})

    def row(phase: str, status: str, early: int = 0, diverged: int = 0, epochs: int = 4,
            seconds: float = 1.0) -> dict[str, str]:
        return {"phase": phase, "trial_id": f"t{len(rows)}", "status": status,
                "stopped_early": str(early), "diverged": str(diverged), "epochs": str(epochs),
                "training_seconds": str(seconds)}

    rows: list[dict[str, str]] = []
    for spec in (("distill", "TERMINATED"), ("distill", "TERMINATED", 1, 0, 1),
                 ("distill", "TERMINATED", 1, 0, 2), ("distill", "TERMINATED", 0, 1, 0),
                 ("distill", "ERROR", 0, 0, 0), ("distill", "RUNNING", 0, 0, 3),
                 ("baseline", "TERMINATED"), ("baseline", "TERMINATED", 1, 0, 1)):
        rows.append(row(*spec))
    cost = search_cost(cfg, [TrialRow.from_csv(r) for r in rows], [],
                       {"search": {"status": "started", "wall_seconds": 9.0}})
    d, b = cost.kinds["distilled"], cost.kinds["baseline"]
    assert (d.trials, d.full_budget, d.stopped_early, d.diverged, d.failed,
            d.incomplete) == (6, 1, 2, 1, 1, 1)
    assert d.trial_epochs == 4 + 1 + 2 + 0 + 0 + 3  # the epochs each ran, from trials.csv
    assert (b.trials, b.full_budget, b.stopped_early) == (2, 1, 1)
    assert cost.total.full_budget == 2 and cost.total.training_seconds == 8.0
    assert cost.total.wall_seconds == 9.0  # the kinds run side by side: one wall time


def test_the_final_evaluation_keeps_the_best_max_widths_and_the_best_baselines_width() -> None:
    from kdsearch.config import config_from_dict
    from kdsearch.selection import select_settings

    cfg = config_from_dict({"report": {"max_widths": 2}, "search": {"space": {
        "lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-1},
        "width": {"distribution": "choice", "values": [8, 16, 32, 64]}}}})

    def row(phase: str, width: int, acc: float) -> dict[str, str]:
        return {"phase": phase, "trial_id": f"{phase[0]}{width}", "status": "TERMINATED",
                "stopped_early": "0", "diverged": "0", "epochs": "40", "val_acc": str(acc),
                "val_loss": "0.1", "lr": "0.01", "width": str(width), "params": str(width)}

    distilled = {8: 0.90, 16: 0.97, 32: 0.95, 64: 0.96}
    rows = [row("distill", w, a) for w, a in distilled.items()]
    rows += [row("baseline", w, a) for w, a in {8: 0.99, 16: 0.90, 32: 0.91, 64: 0.92}.items()]
    chosen = select_settings(cfg, [TrialRow.from_csv(r) for r in rows])
    kept = sorted({s.width for s in chosen.settings})
    assert kept == [8, 16, 64]  # the two best distilled widths, and the best baseline's (8)
    best = [s for s in chosen.settings if s.best]
    assert {(s.kind, s.width) for s in best} == {("distilled", 16), ("baseline", 8)}
