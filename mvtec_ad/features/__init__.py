"""Features: frozen backbones (backbone.py) and their weights (weights.py), handcrafted image features (handcrafted.py)."""
