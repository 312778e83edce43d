from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from analytics.detection import DETECTORS
from analytics.detection.calibration import SENSITIVITIES
from analytics.evaluation import evaluation_report, series_evaluate
from analytics.synthetic import CsvFormatError, load_labelled_folder, synthetic_suite


class Command(BaseCommand):
    help = (
        "Evaluate a detector on the synthetic suite (or a folder of labelled CSVs): per-label table, "
        "then one RESULT line. Reads and writes nothing else."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--detector", default="ensemble", help="registered detector name (default: ensemble)")
        parser.add_argument("--sensitivity", default="medium", choices=list(SENSITIVITIES))
        parser.add_argument(
            "--csv-dir", default=None, help="folder of timestamp,value,label CSVs instead of the synthetic suite"
        )
        parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic suite")
        parser.add_argument("--chunk", type=int, default=60, help="points per update call, as the workers batch")
        parser.add_argument(
            "--gap-samples", type=float, default=10.0, help="anomalous points this many intervals apart merge"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["detector"]
        if name not in DETECTORS:
            raise CommandError(f"unknown detector {name!r}; known: {', '.join(sorted(DETECTORS))}")
        if options["chunk"] < 1:
            raise CommandError("--chunk must be at least 1")
        if options["gap_samples"] < 0:
            raise CommandError("--gap-samples must not be negative")
        if options["csv_dir"]:
            try:
                suite = load_labelled_folder(options["csv_dir"])
            except (OSError, CsvFormatError) as error:
                raise CommandError(str(error)) from error
            if not suite:
                raise CommandError(f"no *.csv in {options['csv_dir']}")
        else:
            suite = synthetic_suite(seed=options["seed"])

        outcomes = []
        for series in suite:
            outcome = series_evaluate(
                series, name, options["sensitivity"], chunk=options["chunk"], gap_samples=options["gap_samples"]
            )
            outcomes.append(outcome)
            if options["verbosity"] >= 2:
                self.stdout.write(
                    f"{series.name}: {len(series.timestamps)} points, {len(series.truth)} truth windows, "
                    f"{len(outcome.detections)} detections"
                )
        report = evaluation_report(outcomes)
        self.stdout.write(report.table())
        self.stdout.write(report.result_line())
