"""`python -m mvtec_ad stats` as a user runs it, on the tiny demo set."""

import csv

from tests.helpers import cli

PLOTS = ("bgr_density.png", "anomaly_area_violin.png", "feature_correlation.png")


def test_stats_on_every_category_writes_one_row_each(tiny_root, tmp_path):
    out = tmp_path / "stats"
    cli("stats", "--data.root", str(tiny_root), "--categories", "all", "--out", str(out))
    with (out / "stats.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["category"] for r in rows] == ["fabric", "washer"]
    for r in rows:  # tests/conftest.py TINY: 12 train, 4 good, 8 defective test images of 64 px
        assert (r["train"], r["test_good"], r["test_defective"]) == ("12", "4", "8"), r
        assert (r["width_min"], r["height_max"]) == ("64", "64")
        assert int(r["defect_types"]) >= 1 and len(r["defect_type_names"].split(";")) == int(
            r["defect_types"]
        )
        assert 0 < float(r["avg_anomaly_area_pct"]) < 100 and 0 < float(r["avg_perceived_brightness"]) < 255
        assert 0 < float(r["avg_contrast"]) <= 127.5
    with (out / "images.csv").open() as f:
        assert sum(1 for _ in csv.DictReader(f)) == 2 * 24
    table = [line for line in (out / "stats.md").read_text().splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table[1:]] == ["fabric", "washer"]
    for name in (*PLOTS, "channel_sums_vs_brightness_fabric.png", "channel_sums_vs_brightness_washer.png"):
        assert (out / name).stat().st_size > 1000, name


def test_stats_unknown_category_is_a_one_line_error(tiny_root, tmp_path):
    result = cli(
        "stats", "--data.root", str(tiny_root), "--categories", "bottle", "--out", str(tmp_path), check=False
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: Unknown category 'bottle'" in result.stderr and "fabric, washer" in result.stderr
