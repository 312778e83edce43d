"""Vigil's anomaly detection library: numpy and scikit-learn in, frozen dataclasses out, no Django.

Importing the package registers every detector.
"""

from analytics.detection import detectors, robust  # noqa: F401  (register the detectors)
from analytics.detection.base import DETECTORS, LABELS, Detector, Scores, State, UnknownDetector, detector_create

__all__ = ["DETECTORS", "LABELS", "Detector", "Scores", "State", "UnknownDetector", "detector_create"]
