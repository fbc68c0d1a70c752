"""Self-attention over a (T, H, W) token grid in one of several sparsity patterns, plus text
cross-attention and 3D RoPE.

Every pattern splits the flattened token sequence (w fastest, then h, then t) into disjoint sets
and runs dense attention inside each set. The sets are made by reshape/permute so that each set
is one ordinary, shorter sequence for `scaled_dot_product_attention` (a fused / Flash kernel on
GPU); no N x N mask is ever built.

Kinds of layer (a model-level attention mode alternates two of them, see `layer_kinds`):
- full:        one set, all tokens.
- spatial:     one set per frame (2+1D, first half).
- temporal:    one set per spatial position (2+1D, second half).
- single_skip: Skiparse Single Skip, sets {i : i mod k = r}.
- group_skip:  Skiparse Group Skip, sets {i : floor(i / k) mod k = r}.
- skip:        stride-k sets, like single_skip (skip+window baseline).
- window:      k consecutive tokens (skip+window baseline).
Sparse kinds pad the sequence to a multiple of k^2 with masked tokens.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LayerKind = Literal["full", "spatial", "temporal", "single_skip", "group_skip", "skip", "window"]
AttentionMode = Literal["full", "spatial_temporal", "skip_window", "skiparse"]
SPARSE_KINDS = ("single_skip", "group_skip", "skip", "window")
Grid = tuple[int, int, int]


def layer_kinds(mode: AttentionMode, num_layers: int, full_layers: list[int]) -> list[LayerKind]:
    """The kind of every layer: two kinds alternate; `full_layers` (negative = from the end) are
    full attention in the sparse modes, as Open-Sora-Plan keeps the outermost blocks dense."""
    if mode == "full":
        return ["full"] * num_layers
    pair: tuple[LayerKind, LayerKind] = {
        "spatial_temporal": ("spatial", "temporal"),
        "skip_window": ("skip", "window"),
        "skiparse": ("single_skip", "group_skip"),
    }[mode]
    kinds: list[LayerKind] = [pair[i % 2] for i in range(num_layers)]
    if mode != "spatial_temporal":
        for index in full_layers:
            if -num_layers <= index < num_layers:
                kinds[index] = "full"
    return kinds


def padded_length(n: int, kind: LayerKind, k: int) -> int:
    if kind not in SPARSE_KINDS:
        return n
    return -(-n // (k * k)) * k * k


def to_sequences(x: Tensor, kind: LayerKind, grid: Grid, k: int) -> Tensor:
    """(B, M, ...) -> (B * sets, set_length, ...). M is the (padded) token count."""
    b, m, rest = x.shape[0], x.shape[1], x.shape[2:]
    t, h, w = grid
    if kind == "full":
        return x
    if kind == "spatial":
        return x.reshape(b * t, h * w, *rest)
    if kind == "temporal":
        return x.reshape(b, t, h * w, *rest).transpose(1, 2).reshape(b * h * w, t, *rest)
    if kind in ("single_skip", "skip"):  # i = n*k + r
        return x.reshape(b, m // k, k, *rest).transpose(1, 2).reshape(b * k, m // k, *rest)
    if kind == "group_skip":  # i = a*k^2 + g*k + j: set g holds (a, j)
        x = x.reshape(b, m // (k * k), k, k, *rest).transpose(1, 2)
        return x.reshape(b * k, m // k, *rest)
    if kind == "window":
        return x.reshape(b * (m // k), k, *rest)
    raise ValueError(f"unknown layer kind {kind!r}")


def from_sequences(y: Tensor, kind: LayerKind, grid: Grid, k: int, batch: int) -> Tensor:
    """Inverse of `to_sequences`: (B * sets, set_length, ...) -> (B, M, ...)."""
    rest = y.shape[2:]
    m = y.shape[0] * y.shape[1] // batch
    t, h, w = grid
    if kind == "full":
        return y
    if kind == "spatial":
        return y.reshape(batch, m, *rest)
    if kind == "temporal":
        return y.reshape(batch, h * w, t, *rest).transpose(1, 2).reshape(batch, m, *rest)
    if kind in ("single_skip", "skip"):
        return y.reshape(batch, k, m // k, *rest).transpose(1, 2).reshape(batch, m, *rest)
    if kind == "group_skip":
        y = y.reshape(batch, k, m // (k * k), k, *rest).transpose(1, 2)
        return y.reshape(batch, m, *rest)
    if kind == "window":
        return y.reshape(batch, m, *rest)
    raise ValueError(f"unknown layer kind {kind!r}")


def patch_grid(latent_shape: tuple[int, int, int], patch_size_t: int, patch_size: int) -> Grid:
    """The token grid of latents (T, H, W) cut into patches; a ValueError when they do not divide."""
    t, h, w = latent_shape
    pt, p = patch_size_t, patch_size
    if t % pt or h % p or w % p:
        raise ValueError(f"latent size {latent_shape} is not divisible by patch {pt}x{p}x{p}")
    return t // pt, h // p, w // p


def grid_positions(grid: Grid, device: torch.device | None = None) -> Tensor:
    """(N, 3) integer (t, h, w) position of every flattened token."""
    t, h, w = grid
    axes = [torch.arange(n, device=device) for n in (t, h, w)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


RopePairing = Literal["adjacent", "halves"]


def rope_3d(grid: Grid, head_dim: int, theta: float = 10000.0, device: torch.device | None = None,
            dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """cos, sin of shape (N, head_dim // 2): channel pairs are split between the t, h, w axes
    (a third each when head_dim is a multiple of 6), ordered t, h, w, then by frequency.

    Angles are float32 products (the usual RoPE formula, bit for bit upstream's); cos and sin
    are taken in `dtype`."""
    pairs_hw = head_dim // 6
    pairs_t = head_dim // 2 - 2 * pairs_hw
    positions = grid_positions(grid, device).float()
    angles = []
    for axis, pairs in enumerate((pairs_t, pairs_hw, pairs_hw)):
        exponents = torch.arange(0, 2 * pairs, 2, device=device).float() / (2 * pairs)
        angles.append(positions[:, axis, None] * (1.0 / theta**exponents))
    angle = torch.cat(angles, dim=-1).to(dtype)
    return angle.cos(), angle.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, pairing: RopePairing = "adjacent") -> Tensor:
    """Rotate channel pairs of x (B, N, heads, head_dim) by the per-token angles.

    "adjacent" pairs channels (2i, 2i+1); "halves" (Open-Sora-Plan's layout) splits head_dim
    into t, h, w thirds and pairs channel j of a third with j + third/2. Computed in float32 or
    wider."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    cos, sin = cos[:, None, :].to(dtype), sin[:, None, :].to(dtype)
    if pairing == "adjacent":
        x0, x1 = x.to(dtype).unflatten(-1, (-1, 2)).unbind(-1)
    else:
        x0, x1 = (h.flatten(-2) for h in x.to(dtype).unflatten(-1, (3, 2, -1)).unbind(-2))
    r0, r1 = x0 * cos - x1 * sin, x0 * sin + x1 * cos
    if pairing == "adjacent":
        rotated = torch.stack((r0, r1), dim=-1)
    else:
        rotated = torch.stack((r0.unflatten(-1, (3, -1)), r1.unflatten(-1, (3, -1))), dim=-2)
    return rotated.flatten(-3 if pairing == "halves" else -2).type_as(x)


def set_key_mask(valid: Tensor | None, n: int, m: int, kind: LayerKind, grid: Grid, k: int,
                 batch: int, device: torch.device) -> Tensor | None:
    """Boolean SDPA mask (B * sets, 1, 1, set_length) of real keys, or None when nothing is
    masked (then the kernel runs unmasked)."""
    if valid is None and m == n:
        return None
    if valid is None:
        valid = torch.ones(batch, n, dtype=torch.bool, device=device)
    valid = F.pad(valid, (0, m - n), value=False)
    keys = to_sequences(valid, kind, grid, k)
    # A set made only of padding would give NaN rows; its outputs are discarded anyway.
    keys = keys | ~keys.any(dim=-1, keepdim=True)
    return keys[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention of one layer kind, with 3D RoPE on queries and keys."""

    def __init__(self, dim: int, num_heads: int, kind: LayerKind = "full", sparse_k: int = 4,
                 rope_pairing: RopePairing = "adjacent"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if kind in SPARSE_KINDS and sparse_k < 2:
            raise ValueError(f"sparse_k must be >= 2 for {kind}, got {sparse_k}")
        if rope_pairing not in ("adjacent", "halves"):
            raise ValueError(f"unknown rope_pairing {rope_pairing!r}; use 'adjacent' or 'halves'")
        if rope_pairing == "halves" and (dim // num_heads) % 6:
            raise ValueError(f"rope_pairing 'halves' needs a head_dim divisible by 6, "
                             f"got {dim // num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.rope_pairing: RopePairing = rope_pairing
        self.kind: LayerKind = kind
        self.sparse_k = sparse_k
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, grid: Grid, rope: tuple[Tensor, Tensor] | None = None,
                valid: Tensor | None = None) -> Tensor:
        """x: (B, N, dim) tokens of `grid`; valid: optional (B, N) bool of real tokens."""
        b, n, dim = x.shape
        q, k, v = self.to_qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        if rope is not None:
            q, k = (apply_rope(y, *rope, self.rope_pairing) for y in (q, k))
        out = attend_in_sets(q, k, v, self.kind, grid, self.sparse_k, valid)
        return self.to_out(out.reshape(b, n, dim))


def attend_in_sets(q: Tensor, k: Tensor, v: Tensor, kind: LayerKind, grid: Grid, sparse_k: int,
                   valid: Tensor | None = None) -> Tensor:
    """Dense attention within each set of `kind`. q, k, v: (B, N, heads, head_dim)."""
    b, n = q.shape[:2]
    m = padded_length(n, kind, sparse_k)
    mask = set_key_mask(valid, n, m, kind, grid, sparse_k, b, q.device)

    def split(x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0, 0, 0, 0, m - n))
        return to_sequences(x, kind, grid, sparse_k).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return from_sequences(out.transpose(1, 2), kind, grid, sparse_k, b)[:, :n]


class CrossAttention(nn.Module):
    """Every video token attends to all (unpadded) text tokens, whatever the self-attention kind."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor | None = None) -> Tensor:
        b, n, dim = x.shape
        q = self.to_q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.to_kv(text).reshape(b, -1, 2, self.num_heads, self.head_dim).unbind(2)
        mask = None if text_mask is None else text_mask.bool()[:, None, None, :]
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, dim))
