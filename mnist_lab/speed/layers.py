"""Drop-in CPU replacements for two torch layers, used by `accelerate` on the CPU only.

Each takes over the parameters of the layer it replaces (the same tensors, under the same
names) and computes the same function; only the random dropout masks are drawn differently.
torch's CPU dropout draws one 32-bit number per element, one element at a time, and
nn.MultiheadAttention's training path moves heads around in copies: together about a
third of the ViT's training step on a CPU (docs/performance.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WORD_LANES = 4  # 16-bit random draws per 64-bit random word
LANE_VALUES = 1 << 16


def keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A tensor like `x`: 0 where an element is dropped, 1/(1-p) where it is kept.

    Every 64-bit word from torch's generator gives four 16-bit draws, so p is applied to the
    nearest 1/65536 (0.1 becomes 0.100006) and kept elements are scaled to stay unbiased.
    """
    dropped_values = round(p * LANE_VALUES)
    n = x.numel()
    words = torch.empty(-(-n // WORD_LANES), dtype=torch.int64, device=x.device).random_(-(2**63), None)
    draws = words.view(torch.int16)[:n].view(x.shape)  # uniform over -32768..32767
    # Kept where draw >= threshold, computed in float arithmetic rather than as a comparison:
    # torch's bool-to-float conversion is not vectorized, and this is ~4× faster.
    threshold = dropped_values - LANE_VALUES // 2
    keep = draws.to(x.dtype).sub_(threshold - 1).clamp_(0, 1)  # draws are integers: 0 or 1
    return keep.mul_(LANE_VALUES / (LANE_VALUES - dropped_values))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0:
        return x
    if p == 1:
        return torch.zeros_like(x)
    return x * keep_mask(x, p)


class FastDropout(nn.Module):
    """nn.Dropout, with the mask drawn four elements per 64-bit random word."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class FastSelfAttention(nn.Module):
    """nn.MultiheadAttention (batch_first, no extra biases) written out in matmuls.

    Called as the original is, `attn(query, key, value)`, and returns `(output, None)`. With
    17 tokens a fused attention kernel has nothing to gain; what costs is splitting and
    merging heads and the dropout on the attention weights. When the query is a prefix of
    the key (the CLS-only block), keys and values are projected once for all tokens.
    """

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        assert attention.batch_first and attention._qkv_same_embed_dim and attention.bias_k is None, \
            "only the report's kind of attention is supported"
        self.num_heads, self.head_dim, self.dropout = attention.num_heads, attention.head_dim, attention.dropout
        self.in_proj_weight, self.in_proj_bias = attention.in_proj_weight, attention.in_proj_bias
        self.out_proj = attention.out_proj

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False,
                **_) -> tuple[torch.Tensor, None]:
        assert key is value, "self-attention only: the key and the value are the same tokens"
        q, k, v = self._project(query, key)  # each (B, heads, tokens, head_dim)
        weights = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(-1)  # (B, heads, Nq, N)
        weights = dropout(weights, self.dropout, self.training)
        heads = weights @ v  # (B, heads, Nq, head_dim)
        return self.out_proj(heads.transpose(1, 2).flatten(2)), None

    def _project(self, queries: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if queries is tokens:  # one matmul for all three
            parts = F.linear(tokens, weight, bias).unflatten(-1, (3, self.num_heads, self.head_dim))
            return parts.permute(2, 0, 3, 1, 4).unbind(0)  # views, no copies
        d = weight.shape[1]
        q = F.linear(queries, weight[:d], bias[:d]).unflatten(-1, (self.num_heads, self.head_dim))
        kv = F.linear(tokens, weight[d:], bias[d:]).unflatten(-1, (2, self.num_heads, self.head_dim))
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return q.transpose(1, 2), k, v
