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


def rows_of_different_ranges(seed: int = 0) -> torch.Tensor:
    """A (48, 96) weight whose rows span different ranges, so per-row and per-tensor scales differ."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(48, 96, generator=g) * torch.rand(48, 1, generator=g)


def tiny_gpt(seed: int = 0):
    """A 2-layer, 2-head GPT of width 16 over 11 tokens, in eval mode (chapter 11's tests compress it)."""
    from utils.gpt import GPT, GPTConfig
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
