"""The schema of a test run's results (metrics.json), written in one place for every detector."""

from __future__ import annotations

from mvtec_ad.data.contract import DataDescription

# The first keys of metrics.json, in this order; the benchmark's columns come from them.
METRIC_KEYS = (
    "detector",
    "category",
    "protocol",
    "n_test",
    "image_auroc",
    "pixel_auroc",
    "pixel_aupro",
    "image_f1_max",
    "threshold",
    "precision",
    "recall",
    "specificity",
    "balanced_accuracy",
    "error_rate",
)


def test_record(
    detector: str,
    data: DataDescription | None,
    metrics: dict,
    geometry: dict,
    checkpoint: str | None,
    extra: dict,
) -> dict:
    """metrics.json: METRIC_KEYS first, then the other metrics, where the data came from, the model's
    input geometry (image_size, resize, pad, tiling), and `extra`."""
    record = {
        "detector": detector,
        "category": data.category if data else None,
        "protocol": data.protocol if data else None,
        **metrics,
        "protocol_detail": data.protocol_detail if data else None,
        **geometry,
        "root": data.root if data else None,
        "checkpoint": checkpoint,
        **extra,
    }
    return {key: record[key] for key in METRIC_KEYS} | record
