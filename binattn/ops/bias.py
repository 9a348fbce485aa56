"""Learned attention biases: BEiT/BinaryAttention relative-position tables (2-D token grids and
1-D sequences of any length), dense, per-head.

What it does: builds the relative-position index for a Gh×Gw token grid with prefix (cls)
tokens and for a 1-D sequence (offsets clipped to ±R, computed from the lengths at run time, so a
graph with a dynamic sequence length keeps it), and ``nn.Module``s whose forward returns an
additive bias ``[H, Nq, Nk]`` for ``binary_attention(bias=...)``. ``RelPosBias`` and
``SequenceRelPosBias`` also hand their table and index over as they are
(``binary_attention(bias=table, bias_index=index)``: the lookup then happens inside the op).
What it does not: decide where biases go (``binarize_pass``).
"""
from __future__ import annotations

import torch
from torch import nn

from .reference import table_bias


def relpos_table_size(grid: tuple[int, int]) -> int:
    """Rows of the table: (2Gh−1)(2Gw−1) relative offsets + 3 prefix entries."""
    gh, gw = grid
    return (2 * gh - 1) * (2 * gw - 1) + 3


def relpos_index(grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Index ``[N, N]`` into the table, N = num_prefix_tokens + Gh·Gw (BEiT layout).

    Token↔token pairs use their 2-D offset; the last three rows are prefix→token, token→prefix
    and prefix→prefix (all prefix tokens share them).
    """
    gh, gw = grid
    if gh < 1 or gw < 1 or num_prefix_tokens < 0:
        raise ValueError(f"grid must be positive and num_prefix_tokens >= 0, got {grid}, "
                         f"{num_prefix_tokens}")
    coords = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += gh - 1
    rel[:, :, 1] += gw - 1
    token_index = rel[:, :, 0] * (2 * gw - 1) + rel[:, :, 1]
    base = (2 * gh - 1) * (2 * gw - 1)
    p, n = num_prefix_tokens, num_prefix_tokens + gh * gw
    index = torch.empty(n, n, dtype=torch.long)
    index[p:, p:] = token_index
    index[:p, p:] = base
    index[p:, :p] = base + 1
    index[:p, :p] = base + 2
    return index


class RelPosBias(nn.Module):
    """Relative-position bias table ``[(2Gh−1)(2Gw−1)+3, H]``, trunc-normal(0.02) init.

    ``index`` (int32 ``[N, N]``, a non-persistent buffer) holds the table row of every
    (query, key); ``forward()`` returns the gathered ``[H, N, N]`` bias.
    """

    def __init__(self, num_heads: int, grid: tuple[int, int], num_prefix_tokens: int = 1):
        super().__init__()
        self.grid, self.num_prefix_tokens = tuple(grid), num_prefix_tokens
        self.table = nn.Parameter(torch.empty(relpos_table_size(self.grid), num_heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        self.register_buffer("index", relpos_index(self.grid, num_prefix_tokens).to(torch.int32),
                             persistent=False)

    def forward(self) -> torch.Tensor:
        return table_bias(self.table, self.index)


def sequence_relpos_index(table: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
    """Index ``[Nq, Nk]`` (int32, on the table's device) into a 1-D relative-position table of
    ``2R+1`` rows: key j seen from query i sits at offset ``clamp(j − i − (Nk − Nq), −R, R) + R``
    (queries aligned to the last keys, as with a KV cache: self-attention has Nk = Nq)."""
    radius = (table.shape[0] - 1) // 2
    q_pos = torch.arange(n_q, device=table.device) + (n_k - n_q)
    k_pos = torch.arange(n_k, device=table.device)
    offsets = (k_pos[None, :] - q_pos[:, None]).clamp(-radius, radius) + radius
    return offsets.to(torch.int32)


class SequenceRelPosBias(nn.Module):
    """1-D relative-position bias table ``[2R+1, H]`` (T5/ALiBi's idea, learned, unbucketed):
    one scalar per head and clipped offset ``j − i`` in [−R, R], zero init (a pretrained model
    starts unchanged). Lengths come from the call, so a dynamic-length graph keeps them:
    ``forward(n_q, n_k)`` returns the gathered ``[H, Nq, Nk]`` bias; the rewrite passes the
    table and :func:`sequence_relpos_index` to the op instead."""

    def __init__(self, num_heads: int, max_distance: int = 32):
        super().__init__()
        if num_heads < 1 or max_distance < 1:
            raise ValueError(f"num_heads and max_distance must be >= 1, got {num_heads}, "
                             f"{max_distance}")
        self.max_distance = max_distance
        self.table = nn.Parameter(torch.zeros(2 * max_distance + 1, num_heads))

    def forward(self, n_q: int, n_k: int) -> torch.Tensor:
        return table_bias(self.table, sequence_relpos_index(self.table, n_q, n_k))


class DenseBias(nn.Module):
    """One free bias per (head, query, key): ``[H, Nq, Nk]``, zero init."""

    def __init__(self, num_heads: int, n_q: int, n_k: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(num_heads, n_q, n_k))

    def forward(self) -> torch.Tensor:
        return self.table


class HeadBias(nn.Module):
    """One scalar per head, ``[H, 1, 1]``, zero init."""

    def __init__(self, num_heads: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(num_heads, 1, 1))

    def forward(self) -> torch.Tensor:
        return self.table
