"""manage.py score_csv and manage.py evaluate: no database, plain files."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command

SPIKE_ROW = 1200  # 0-based data row index


def write_series(path: Path, *, n: int = 1500, iso: bool = False, labelled: bool = False) -> list[list[str]]:
    """A noisy flat series with one obvious spike (if long enough); returns the data rows as written."""
    rng = np.random.default_rng(7)
    values = 50.0 + rng.standard_normal(n)
    if n > SPIKE_ROW:
        values[SPIKE_ROW] += 20.0
    rows = []
    for i, value in enumerate(values):
        ts = 1_700_000_000 + 60 * i
        stamp = datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if iso else str(ts)
        row = [stamp, f"{value:.4f}", "web-1"]
        if labelled:
            row[2] = "1" if i == SPIKE_ROW else "0"
        rows.append(row)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "value", "label" if labelled else "host"])
        writer.writerows(rows)
    return rows


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_score_csv_writes_one_row_per_input_row_and_flags_the_spike(tmp_path: Path) -> None:
    rows = write_series(tmp_path / "in.csv", iso=True)
    call_command(
        "score_csv",
        str(tmp_path / "in.csv"),
        str(tmp_path / "out.csv"),
        "--detector",
        "robust_zscore",
        stdout=io.StringIO(),
    )
    out = read_rows(tmp_path / "out.csv")
    assert out[0] == ["timestamp", "anomaly_score", "label", "is_anomaly"]
    assert len(out) - 1 == len(rows)
    assert [row[0] for row in out[1:]] == [row[0] for row in rows]  # timestamps as written, in order
    spike = out[1 + SPIKE_ROW]
    assert spike[3] == "1" and spike[2] == "spike" and float(spike[1]) >= 0.9
    flagged = [i for i, row in enumerate(out[1:]) if row[3] == "1"]
    assert SPIKE_ROW in flagged and len(flagged) <= 5


def write_rows(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([["timestamp", "value", "host"], *rows])


@pytest.mark.parametrize("chunk", ["1", "400"])
def test_score_csv_gives_rows_the_detector_dropped_a_zero_score(tmp_path: Path, chunk: str) -> None:
    path = tmp_path / "in.csv"
    rows = write_series(path, n=400)
    rows[100][1] = "nan"  # non-finite
    rows[200][1] = ""  # missing
    rows.insert(301, [rows[300][0], "500.0", "web-1"])  # the same timestamp again, with a huge value
    write_rows(path, rows)
    call_command(
        "score_csv",
        str(path),
        str(tmp_path / "out.csv"),
        "--detector",
        "robust_zscore",
        "--chunk",
        chunk,
        stdout=io.StringIO(),
    )
    out = read_rows(tmp_path / "out.csv")[1:]
    assert len(out) == len(rows)
    dropped = [100, 200]
    if chunk == "1":
        dropped.append(301)  # streamed: the repeat is not newer than what was scored, so it is dropped
    else:
        dropped.append(300)  # one batch: the value sent last wins, as at ingest
        assert out[301][3] == "1"
    for i in dropped:
        assert out[i][1:] == ["0.000000", "", "0"], i


def test_score_csv_in_larger_chunks_scores_the_same_rows(tmp_path: Path) -> None:
    write_series(tmp_path / "in.csv")
    call_command(
        "score_csv",
        str(tmp_path / "in.csv"),
        str(tmp_path / "out.csv"),
        "--detector",
        "robust_zscore",
        "--chunk",
        "100",
        stdout=io.StringIO(),
    )
    out = read_rows(tmp_path / "out.csv")
    assert len(out) == 1501
    assert out[1 + SPIKE_ROW][3] == "1"


def test_score_csv_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="not found"):
        call_command("score_csv", str(tmp_path / "nope.csv"), str(tmp_path / "out.csv"), "--detector", "robust_zscore")


def test_score_csv_refuses_a_bad_header(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("time,val\n0,1\n")
    with pytest.raises(CommandError, match="timestamp,value"):
        call_command("score_csv", str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), "--detector", "robust_zscore")


def test_score_csv_names_the_line_of_an_unparseable_row(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("timestamp,value\n0,1\n60,2\n120,two\n")
    with pytest.raises(CommandError, match="line 4: unparseable value 'two'"):
        call_command("score_csv", str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), "--detector", "robust_zscore")
    assert not (tmp_path / "out.csv").exists()


def test_score_csv_refuses_an_unknown_detector_listing_the_known_ones(tmp_path: Path) -> None:
    write_series(tmp_path / "in.csv", n=10)
    with pytest.raises(CommandError, match=r"unknown detector 'nope'; known: .*robust_zscore"):
        call_command("score_csv", str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), "--detector", "nope")


def test_evaluate_on_a_csv_folder_prints_the_table_and_ends_with_the_result_line(tmp_path: Path) -> None:
    write_series(tmp_path / "a.csv", labelled=True)
    write_series(tmp_path / "b.csv", n=800)  # no label column: a clean series
    stdout = io.StringIO()
    call_command("evaluate", "--detector", "robust_zscore", "--csv-dir", str(tmp_path), stdout=stdout)
    lines = stdout.getvalue().strip().splitlines()
    assert any(line.startswith("anomaly ") for line in lines)  # the CSV label row of the table
    assert re.fullmatch(
        r"RESULT f1=\d\.\d{3} precision=\d\.\d{3} recall=1\.000 fp_per_series_day=\d+\.\d{3} "
        r"mttd_level_shift=nan nab_like=-?\d+\.\d{2}",
        lines[-1],
    ), lines[-1]


def test_evaluate_refuses_an_unknown_detector_and_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="known:"):
        call_command("evaluate", "--detector", "nope", "--csv-dir", str(tmp_path))
    with pytest.raises(CommandError, match=r"no \*\.csv"):
        call_command("evaluate", "--detector", "robust_zscore", "--csv-dir", str(tmp_path))
