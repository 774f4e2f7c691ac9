"""The batch report (CSV and JSON) against the files written, and the totals line."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2compress.batchreport import FIELDS, ReportWriter, Totals, read_report
from e2compress.errors import E2CompressError
from e2compress.options import Options
from e2compress.runner import FileResult, Job, run_job
from helpers import DATA, eman_decode, write_mrc

F32 = np.float32


def batch_results(tmp_path: Path) -> list[FileResult]:
    """A compressed real file, a compressed clamped one, a failure and a skip."""
    rng = np.random.default_rng(3)
    data = rng.normal(0.0, 1.0, (64, 64)).astype(F32)
    clamped = write_mrc(tmp_path / "clamped.mrc", data)
    jobs = [
        Job("EMD-3001.map", str(DATA / "EMD-3001.map"), str(tmp_path / "a.hdf"), Options(bits=6)),
        Job(
            "clamped.mrc",
            str(clamped),
            str(tmp_path / "clamped.hdf"),
            Options(bits=4, value_range=(-1.0, 1.0)),
        ),
        Job("gone.mrc", str(tmp_path / "gone.mrc"), str(tmp_path / "gone.hdf"), Options()),
        Job(
            "again.mrc",
            str(clamped),
            str(tmp_path / "x.hdf"),
            Options(),
            skip="again.mrc: again",
            size=7,
        ),
    ]
    return [run_job(j) for j in jobs]


def check_rows(rows: list[dict[str, object]], tmp_path: Path, blank: object) -> None:
    a, c, gone, again = rows
    for r, src, dst in (
        (a, DATA / "EMD-3001.map", "a.hdf"),
        (c, tmp_path / "clamped.mrc", "clamped.hdf"),
    ):
        out = tmp_path / dst
        ((_, (bits, rmin, rmax, truncated)),) = eman_decode(out)  # type: ignore[misc]
        assert r["status"] == "done"
        assert int(r["bytes_in"]) == src.stat().st_size  # type: ignore[call-overload]
        assert int(r["bytes_out"]) == out.stat().st_size  # type: ignore[call-overload]
        assert float(r["ratio"]) == pytest.approx(src.stat().st_size / out.stat().st_size, 1e-4)  # type: ignore[arg-type]
        assert int(r["bits"]) == bits  # type: ignore[call-overload]
        assert float(r["rmin"]) == rmin  # type: ignore[arg-type]
        assert float(r["rmax"]) == rmax  # type: ignore[arg-type]
        assert int(r["truncated"]) == truncated  # type: ignore[call-overload]
        assert r["worker"] == "local"
        assert float(r["seconds"]) > 0  # type: ignore[arg-type]
    data = np.random.default_rng(3).normal(0.0, 1.0, (64, 64)).astype(F32)
    lo, hi = F32(c["rmin"]), F32(c["rmax"])  # type: ignore[arg-type]
    assert lo == -1.0  # the asked range, widened to put 0.0 on the grid
    outside = int(np.count_nonzero((data < lo) | (data > hi)))
    assert int(c["truncated"]) == outside > 1000  # type: ignore[call-overload]
    assert gone["status"] == "failed"
    assert str(gone["message"]).startswith(str(tmp_path / "gone.mrc"))
    assert gone["bytes_out"] == gone["bits"] == gone["rmin"] == blank
    assert (again["status"], int(again["bytes_in"])) == ("skipped", 7)  # type: ignore[call-overload]


def test_csv_report(tmp_path: Path) -> None:
    results = batch_results(tmp_path)
    totals = Totals()
    with ReportWriter(tmp_path / "report.CSV") as report:
        for r in results:
            report.add(r)
            totals.add(r)
        report.close(totals)
    with open(tmp_path / "report.CSV", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == FIELDS
        rows = list(reader)
    check_rows(rows, tmp_path, "")  # type: ignore[arg-type]


def test_json_report_with_totals(tmp_path: Path) -> None:
    results = batch_results(tmp_path)
    totals = Totals(seconds=2.0)
    with ReportWriter(tmp_path / "r.json") as report:
        for r in results:
            report.add(r)
            totals.add(r)
        report.close(totals)
    rows, (tot,) = read_report(tmp_path / "r.json")
    lines = (tmp_path / "r.json").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [*rows, {"totals": tot}]  # JSON Lines
    check_rows(rows, tmp_path, None)
    sizes_in = (DATA / "EMD-3001.map").stat().st_size + (tmp_path / "clamped.mrc").stat().st_size
    sizes_out = (tmp_path / "a.hdf").stat().st_size + (tmp_path / "clamped.hdf").stat().st_size
    assert tot == {
        "files": 4,
        "compressed": 2,
        "skipped": 1,
        "failed": 1,
        "stopped": 0,
        "unstarted": 0,
        "bytes_in": sizes_in,
        "bytes_out": sizes_out,
        "bytes_saved": sizes_in - sizes_out,
        "ratio": round(sizes_in / sizes_out, 4),
        "seconds": 2.0,
        "throughput_mb_s": round(sizes_in / 2.0 / 1e6, 3),
    }
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_totals_line() -> None:
    t = Totals(bytes_in=3_000_000, bytes_out=1_000_000, seconds=2.0)
    t.counts["failed"] = 2
    assert t.line() == "total: 3.0 MB -> 1.0 MB, 2.0 MB saved (3.00x), 2.0 s, 1.5 MB/s, 2 failed"
    assert Totals().line() == "total: 0 B -> 0 B, 0 B saved (0.00x), 0.0 s, 0.0 MB/s, 0 failed"


def test_bad_report_paths(tmp_path: Path) -> None:
    with pytest.raises(E2CompressError, match=r"\.csv or a \.json"):
        ReportWriter(tmp_path / "r.txt")
    with pytest.raises(E2CompressError, match="does not exist"):
        ReportWriter(tmp_path / "no" / "r.csv")


def test_a_report_is_appended_to_and_each_row_is_on_disk_at_once(tmp_path: Path) -> None:
    """A rerun adds its rows below the earlier ones (a "done" row stays done); each row
    is in the file as soon as add() returns, so it survives a kill of the writer."""
    results = batch_results(tmp_path)
    for kind in (".csv", ".json"):
        path = tmp_path / f"r{kind}"
        first = ReportWriter(path)
        first.add(results[0])
        rows, _ = read_report(path)  # the writer still open: the row is there
        assert [r["status"] for r in rows] == ["done"]
        first.add(results[2])
        # no close(): as after kill -9
        again = ReportWriter(path)
        again.add(results[3])
        again.close(Totals())
        rows, totals = read_report(path)
        assert [(Path(r["source"]).name, r["status"]) for r in rows] == [
            ("EMD-3001.map", "done"),
            ("gone.mrc", "failed"),
            ("again.mrc", "skipped"),
        ]
        assert int(rows[0]["bytes_out"]) == (tmp_path / "a.hdf").stat().st_size
        assert len(totals) == (kind == ".json")
        first.discard()


def test_a_row_cut_by_a_kill_is_ended_before_the_next_run_appends(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    with ReportWriter(path) as report:
        report.add(FileResult("a", "a", "a.hdf", "failed", "a: bad"))
    with open(path, "a") as fh:
        fh.write("b,b.hdf,do")  # the write of a row interrupted
    with ReportWriter(path) as report:
        report.add(FileResult("c", "c", "c.hdf", "failed", "c: bad"))
    rows, _ = read_report(path)
    assert [r["source"] for r in rows] == ["a", "b", "c"]
    assert rows[2]["status"] == "failed"


def test_a_report_in_another_format_is_not_appended_to(tmp_path: Path) -> None:
    """An older CSV (other columns) or a whole JSON document is refused, unchanged."""
    cases = {
        "r.csv": ("old\n", "other columns"),
        "r.json": ('{"files": [\n  {"source": "a"}\n],\n"totals": {}}\n', "not JSON Lines"),
    }
    for name, (text, why) in cases.items():
        old = tmp_path / name
        old.write_text(text)
        with pytest.raises(E2CompressError, match=why):
            ReportWriter(old)
        assert old.read_text() == text


# names as Python sees file names: any text, undecodable bytes as surrogate escapes
_TEXT = st.one_of(st.text(max_size=20), st.binary(max_size=20).map(os.fsdecode))
_RESULT = st.builds(
    FileResult,
    given=_TEXT,
    source=_TEXT,
    target=_TEXT,
    status=st.sampled_from(["done", "skipped", "failed", "stopped", "unstarted"]),
    message=_TEXT,
    bytes_in=st.integers(0, 2**40),
    bytes_out=st.integers(1, 2**40),
    bits=st.one_of(st.none(), st.integers(0, 16)),
)


@settings(max_examples=60, deadline=None)
@given(
    runs=st.lists(st.tuples(st.lists(_RESULT, max_size=5), st.booleans()), min_size=1),
    kind=st.sampled_from([".csv", ".json"]),
)
def test_every_run_appends_its_rows_in_order(
    tmp_path_factory: pytest.TempPathFactory,
    runs: list[tuple[list[FileResult], bool]],
    kind: str,
) -> None:
    """Whatever the runs hold (names with commas, quotes, newlines, bytes that are not
    UTF-8), and whether each
    ended or was killed, the report holds every row of every run, in order, with a
    totals line for each run that ended (JSON)."""
    path = tmp_path_factory.mktemp("r") / f"report{kind}"
    for results, ended in runs:
        writer = ReportWriter(path)
        for r in results:
            writer.add(r)
        if ended:
            writer.close(Totals())
        else:
            writer.discard()  # the process killed: nothing more is written
    rows, totals = read_report(path)
    want = [r for results, _ in runs for r in results]
    assert [(r["source"], r["output"], r["status"]) for r in rows] == [
        (w.given, w.target, w.status) for w in want
    ]
    assert [str(r["message"] or "") for r in rows] == [w.message for w in want]
    assert len(totals) == (sum(ended for _, ended in runs) if kind == ".json" else 0)
