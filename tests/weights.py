"""Shared by the reference-equivalence tests: weights that make every parameter matter."""
import torch
from torch import nn


def scramble_(module: nn.Module, seed: int) -> nn.Module:
    """Give every parameter distinct, non-default values (N(0, 0.5²)), biases included, so each one matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return module
