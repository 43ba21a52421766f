"""mvtec_ad: unsupervised visual anomaly detection on MVTec-AD-layout data with PyTorch Lightning."""

from mvtec_ad.search.cpu import apply_override

apply_override()  # MVTEC_AD_CPU=avx2 must reach torch, oneDNN, MKL and faiss before they load

__version__ = "0.1.0"
