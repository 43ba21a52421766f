"""What a person reads: files.py (atomic writes), charts.py, overlays.py, run_report.py (a test run's
metrics.json, charts, overlays and report page), predictions.py (predict's tables and heatmaps),
stats_plots.py."""
