"""Faster CPU versions of torch layers, with the same parameters and the same function.

Each is a subclass of the torch layer it replaces, so parameter names, initialisation
and saved weights are unchanged; only `forward` differs. `use_stock_layers(model)` puts
every one of them (and the ViT's last-block shortcut, in vit.py) back on torch's own code
path: the benchmark trains that version as the usual loop's model, and the tests check
both versions compute the same thing. Where the fused kernels of `cpu_kernels` cannot be
compiled, the fast layers use torch ops.

Measured on 2 cores (AMD EPYC, fp32, batch 64, steady-state steps):
- `Dropout`: torch's CPU dropout draws one 32-bit MT19937 number per element, one
  element at a time; that was a quarter of the ViT's training step.
- `SelfAttention`: nn.MultiheadAttention's training path splits and merges heads with
  ~380 copies a step and draws its dropout the slow way. Together with `Dropout` the
  ViT's step went from ~680 to ~950 images/s.
- `ReLUMaxPool2d`: max-pooling commutes with ReLU (both are monotone), so pooling first
  applies the ReLU to a quarter of the elements: the CNN step ~1.1-1.4× faster.
- `ReLUMaxPool2d` and `BatchNormReLU` run as fused kernels, and `Dropout` as a compiled
  one, on the CPU (`cpu_kernels`; measured there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernels

WORD_LANES = 4  # 16-bit random draws per 64-bit random word
LANE_VALUES = 1 << 16


class StockSwitch:
    """A layer with a fast path and torch's own path; `stock = True` selects torch's."""

    stock = False


class Dropout(StockSwitch, nn.Dropout):
    """nn.Dropout with a faster CPU path (`dropout`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stock or not self.training:
            return super().forward(x)
        return dropout(x, self.p)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout. On the CPU with the compiled kernel (`cpu_kernels.Dropout`),
    else with `keep_mask`; on a GPU torch's own is already fast."""
    if x.device.type == "cpu" and 0 < p < 1:
        if x.dtype == torch.float32 and cpu_kernels.available():
            return cpu_kernels.Dropout.apply(x, p)
        return x * keep_mask(x, p)
    return F.dropout(x, p)


def keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A tensor like `x`: 0 where an element is dropped, 1/(1-p) where it is kept.

    Every 64-bit word from torch's generator gives four 16-bit draws, so p is applied to the
    nearest 1/65536 (0.1 becomes 0.100006) and kept elements are scaled to stay unbiased.
    """
    dropped_values = round(p * LANE_VALUES)
    n = x.numel()
    words = torch.empty(-(-n // WORD_LANES), dtype=torch.int64, device=x.device).random_(-(2**63), None)
    draws = words.view(torch.int16)[:n].view(x.shape)  # uniform over -32768..32767
    # Kept where draw >= threshold. Computed in float arithmetic, not as a comparison:
    # torch's bool-to-float conversion is not vectorized, and this is ~4× faster.
    threshold = dropped_values - LANE_VALUES // 2
    keep = draws.to(x.dtype).sub_(threshold - 1).clamp_(0, 1)  # draws are integers: 0 or 1
    return keep.mul_(LANE_VALUES / (LANE_VALUES - dropped_values))


class SelfAttention(StockSwitch, nn.MultiheadAttention):
    """Multi-head self-attention on (batch, tokens, dim), written out in matmuls.

    With 17 tokens a fused attention kernel has nothing to gain; what costs is moving
    heads around and the dropout on the attention weights, done here with `dropout`.
    `attn(queries, tokens)` attends from only some tokens' queries (the ViT's last block
    needs only the CLS token's); `attn(tokens)` from every token's.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__(dim, num_heads, dropout=dropout, batch_first=True)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        tokens = queries if tokens is None else tokens
        if self.stock:
            return super().forward(queries, tokens, tokens, need_weights=False)[0]
        q, k, v = self._project(queries, tokens)  # each (B, heads, tokens, head_dim)
        weights = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(-1)  # (B, heads, Nq, N)
        if self.training:
            weights = dropout(weights, self.dropout)
        heads = weights @ v  # (B, heads, Nq, head_dim)
        return self.out_proj(heads.transpose(1, 2).flatten(2))

    def _project(self, queries: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Queries, keys and values split into heads: one matmul when every token queries."""
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if queries is tokens:
            parts = F.linear(tokens, weight, bias).unflatten(-1, (3, self.num_heads, self.head_dim))
            return parts.permute(2, 0, 3, 1, 4).unbind(0)  # views, no copies
        d = self.embed_dim
        q = F.linear(queries, weight[:d], bias[:d]).unflatten(-1, (self.num_heads, self.head_dim))
        kv = F.linear(tokens, weight[d:], bias[d:]).unflatten(-1, (2, self.num_heads, self.head_dim))
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return q.transpose(1, 2), k, v


class ReLUMaxPool2d(StockSwitch, nn.MaxPool2d):
    """ReLU then max-pooling, computed as max-pooling then ReLU: the same numbers and
    gradients, with the ReLU on a quarter of the elements. 2×2 pooling of channels-last
    float32 maps on the CPU runs as one fused kernel each way (`cpu_kernels.ReLUMaxPool`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stock:
            return super().forward(torch.relu(x))
        if self._is_plain_2x2() and cpu_kernels.applies_to(x) and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0:
            return cpu_kernels.ReLUMaxPool.apply(x)
        return torch.relu_(super().forward(x))

    def _is_plain_2x2(self) -> bool:
        return (self.kernel_size in (2, (2, 2)) and self.stride in (2, (2, 2)) and self.padding in (0, (0, 0))
                and self.dilation in (1, (1, 1)) and not self.ceil_mode and not self.return_indices)


class BatchNormReLU(StockSwitch, nn.BatchNorm2d):
    """BatchNorm2d followed by ReLU. In training, channels-last float32 maps on the CPU take
    one fused kernel each way (`cpu_kernels.BatchNormReLU`); the parameters, the buffers and
    their updates are BatchNorm2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stock or not (self.training and self.affine and self.track_running_stats and cpu_kernels.applies_to(x)):
            return torch.relu(super().forward(x))
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        return cpu_kernels.BatchNormReLU.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                               momentum, self.eps)


def use_stock_layers(model: nn.Module) -> nn.Module:
    """Switch every layer of this module to torch's own code path (in place); returns `model`."""
    for module in model.modules():
        if isinstance(module, StockSwitch):
            module.stock = True
    return model
