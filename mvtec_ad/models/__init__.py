"""Detectors, one file each, named as in configs/: a pure `Detector` (nn.Module) beside its thin LightningModule.

dfr.py feature_ae.py pixel_ae.py favae.py     trained by gradient descent
knn.py patchcore.py classical.py              fitted once (memory banks, scikit-learn estimators)
components/                                   what they share (map head, pre-processor, search, ...)
"""
