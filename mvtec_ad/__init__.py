"""mvtec_ad: unsupervised visual anomaly detection on MVTec-AD-layout data with PyTorch Lightning."""

__version__ = "0.1.0"
