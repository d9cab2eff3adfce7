"""The digits ViT in torch: 2x2 patches of the 8x8 image embedded by a strided convolution, a
class token, learned position embeddings, pre-norm encoder blocks (multi-head self-attention
and a GELU MLP, each in a residual branch), a final LayerNorm and a linear classifier on the
class token.

Attention is written out (separate q, k, v projections, ``[B, S, H, D]`` head split, softmax
of the scaled scores, merge, output projection), as timm and Hugging Face models write it,
so the exported graph has one Reshape that splits heads and one that merges them per block.
torch is imported when a network is built, never at import time.
"""

from __future__ import annotations

DIM = 64  # embedding width
DEPTH = 3  # encoder blocks
HEADS = 4  # attention heads (head dim DIM // HEADS)
MLP_RATIO = 4  # MLP hidden width = MLP_RATIO * DIM
PATCH = 2  # 8x8 image -> 4x4 = 16 patches (+ the class token)


def digits_vit(dim: int = DIM, depth: int = DEPTH, heads: int = HEADS, mlp_ratio: int = MLP_RATIO, classes: int = 10):
    """A fresh (untrained) network, input ``[B, 1, 8, 8]``, output logits ``[B, classes]``."""
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads, self.head_dim = heads, dim // heads
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            b, s, _ = x.shape
            q, k, v = (m(x).reshape(b, s, self.heads, self.head_dim).transpose(1, 2) for m in (self.q, self.k, self.v))
            att = torch.softmax((q @ k.transpose(-2, -1)) * self.head_dim**-0.5, dim=-1)
            return self.proj((att @ v).transpose(1, 2).reshape(b, s, self.heads * self.head_dim))

    class Block(nn.Module):
        """x + attn(norm1(x)), then x + fc2(gelu(fc1(norm2(x))))"""

        def __init__(self):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(dim), Attention()
            self.norm2 = nn.LayerNorm(dim)
            self.fc1, self.fc2 = nn.Linear(dim, mlp_ratio * dim), nn.Linear(mlp_ratio * dim, dim)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))

    class DigitsViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(1, dim, PATCH, PATCH)
            tokens = (8 // PATCH) ** 2
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
            self.blocks = nn.Sequential(*(Block() for _ in range(depth)))
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, classes)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)  # [B, 16, dim]
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            return self.head(self.norm(self.blocks(x))[:, 0])

    return DigitsViT()
