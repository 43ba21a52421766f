"""Buffers whose size is known only after fitting (memory banks, fitted estimators)."""

from __future__ import annotations

import torch
from torch import nn


class ResizableBuffers(nn.Module):
    """An nn.Module whose named buffers take the shape of the state dict they are loaded from.

    Memory banks and fitted estimators have a size known only after fitting; with this a model
    built from a config loads any checkpoint of it (Lightning's and plain `load_state_dict`).
    """

    resizable_buffers: tuple[str, ...] = ()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in self.resizable_buffers:
            stored = state_dict.get(prefix + name)
            if stored is not None:
                setattr(self, name, torch.empty_like(stored, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
