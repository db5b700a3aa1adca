"""Calibrating static per-step plans (`dit_cache.calibrate`)."""
from .api import CALIBRATION_SEEDS, Calibration, calibrate, default_actions

__all__ = ["CALIBRATION_SEEDS", "Calibration", "calibrate", "default_actions"]
