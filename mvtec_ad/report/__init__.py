"""What a person reads: files.py (atomic writes), charts.py, overlays.py, test_report.py (a test run's
metrics.json, charts and overlays), predictions.py (predict's tables and heatmaps), stats_plots.py."""
