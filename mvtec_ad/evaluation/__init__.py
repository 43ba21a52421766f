"""Evaluation, written once for every detector: metrics.py (exact AUROC/AUPRO/F1 on the device),
thresholds.py (the operating threshold), selection.py (which test images to show), results.py
(the metrics.json schema), evaluator.py (the callback that runs them all) and results_table.py (the
benchmark's rows over many runs and each config's mean row)."""
