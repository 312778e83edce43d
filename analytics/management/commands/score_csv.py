from __future__ import annotations

import csv
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError, CommandParser

from analytics.detection import Scores, UnknownDetector, detector_create
from analytics.detection.calibration import SENSITIVITIES
from analytics.synthetic import CsvFormatError, read_series_csv

OUTPUT_HEADER = ("timestamp", "anomaly_score", "label", "is_anomaly")


def _scatter(scores: Scores, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each input row of a chunk, the index of its point in `scores`, or -1 if dropped.

    The detector keeps the last of equal timestamps among finite rows and drops non-finite
    and not-newer ones; only the row it kept gets the score.
    """
    where = np.full(len(ts), -1, dtype=np.int64)
    finite = np.flatnonzero(np.isfinite(ts) & np.isfinite(values))
    if not len(scores) or not len(finite):
        return where
    # The last finite row of each timestamp: unique over the reversed rows finds it first.
    _, first_in_reversed = np.unique(ts[finite][::-1], return_index=True)
    kept = finite[len(finite) - 1 - first_in_reversed]
    position = np.searchsorted(scores.timestamps, ts[kept])
    inside = position < len(scores)
    matched = np.zeros(len(kept), dtype=bool)
    matched[inside] = scores.timestamps[position[inside]] == ts[kept][inside]
    where[kept[matched]] = position[matched]
    return where


class Command(BaseCommand):
    help = (
        "Stream a timestamp,value CSV through a detector in chunks (as if it arrived live) and write "
        "timestamp,anomaly_score,label,is_anomaly, one row per input row in input order."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("input", help="CSV with a header naming timestamp and value (others ignored)")
        parser.add_argument("output", help="CSV to write (overwritten)")
        parser.add_argument("--detector", default="ensemble", help="registered detector name (default: ensemble)")
        parser.add_argument("--sensitivity", default="medium", choices=list(SENSITIVITIES))
        parser.add_argument("--chunk", type=int, default=1, help="rows per update call (1: point by point)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["chunk"] < 1:
            raise CommandError("--chunk must be at least 1")
        try:
            detector = detector_create(options["detector"], sensitivity=options["sensitivity"])
        except UnknownDetector as error:
            raise CommandError(str(error)) from error
        try:
            rows = read_series_csv(options["input"])
        except FileNotFoundError as error:
            raise CommandError(f"input file not found: {options['input']}") from error
        except (OSError, CsvFormatError) as error:
            raise CommandError(str(error)) from error

        n, chunk = len(rows.timestamps), options["chunk"]
        score = np.zeros(n)
        label = np.full(n, "", dtype=object)
        anomalous = np.zeros(n, dtype=bool)
        state = detector.initial_state()
        for start in range(0, n, chunk):
            ts, values = rows.timestamps[start : start + chunk], rows.values[start : start + chunk]
            scores, state = detector.update(state, ts, values)
            where = _scatter(scores, ts, values)
            hit = np.flatnonzero(where >= 0)
            score[start + hit] = scores.score[where[hit]]
            label[start + hit] = scores.label[where[hit]]
            anomalous[start + hit] = scores.anomalous[where[hit]]

        try:
            with open(options["output"], "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(OUTPUT_HEADER)
                for i in range(n):
                    writer.writerow((rows.raw_timestamps[i], f"{score[i]:.6f}", label[i], int(anomalous[i])))
        except OSError as error:
            raise CommandError(f"cannot write {options['output']}: {error}") from error
        self.stdout.write(f"scored {n} rows, {int(anomalous.sum())} anomalous -> {options['output']}")
