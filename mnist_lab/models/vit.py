"""The report's Vision Transformer (Q3, Table 4): 7×7 patches, a CLS token, four encoder blocks."""

import torch
from torch import nn

from .layers import Dropout, SelfAttention, StockSwitch


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, dim), Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """cls_only: compute the output of the CLS token alone (every token still serves as a
        key and a value); the other tokens' outputs are left out."""
        h = self.norm1(x)
        x = x[:, :1] + self.attn(h[:, :1], h) if cls_only else x + self.attn(h)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(StockSwitch, nn.Module):
    """The head reads only the CLS token, so the last block computes only the CLS token's
    output: the same logits and gradients, with the last block's MLP, output projection and
    queries on 1 token instead of 17 (measured on 2 cores: ~1.2× faster steps). With
    `stock = True` (`use_stock_layers`) every block computes every token, as usual ViT code does.
    """

    def __init__(
        self,
        *,
        image_size: int = 28,
        patch_size: int = 7,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        num_classes: int = 10,
    ):
        super().__init__()
        assert image_size % patch_size == 0, "image_size must be divisible by patch_size"
        self.patch_size = patch_size
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(patch_size * patch_size, dim)  # one grey channel per pixel
        # As in the report, the CLS token and the positions start from N(0, 1).
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(EncoderBlock(dim, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p = x.shape[0], self.patch_size
        patches = x.unfold(2, p, p).unfold(3, p, p)  # (B, 1, H/p, W/p, p, p)
        patches = patches.reshape(b, -1, p * p)  # (B, num_patches, p·p), row-major over the grid
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.patch_embed(patches)], dim=1)
        x = self.dropout(x + self.pos_embed)  # (B, num_patches + 1, dim)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, cls_only=i == last and not self.stock)
        return self.head(self.norm(x)[:, 0])  # classify from the CLS token
