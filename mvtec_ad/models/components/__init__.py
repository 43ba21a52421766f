"""Parts the detectors share.

detector.py            AnomalyOutput and Detector, the base of every pure detector module
pre_processor.py       the model's input geometry (saved in checkpoints, exported)
map_head.py            raw map -> score and map at the input size (upsample, blur, score rule)
buffers.py             buffers sized by the checkpoint (memory banks, fitted estimators)
nearest.py coreset.py  nearest-neighbour search, greedy k-center coreset
autoencoder.py         1x1 conv autoencoder blocks; feature_cache.py: frozen features per fit
anomaly_module.py      AnomalyModule, the Lightning base; gradient_module.py (Adam, early
                       stopping), feature_autoencoder.py (DFR, feature AE), fit_once.py (no gradients)
"""
