"""Transformer layers run on the real tokens of a padded batch only ("unpadded" or packed execution).

In a batch of prompts padded to the longest one, 30-50% of the positions are padding; a plain layer pays for
them in every projection, feed-forward, LayerNorm and dropout, although their outputs are never used (they
are masked as attention keys, and nothing reads them). Only attention mixes positions, so:

    pk = Packing(mask)          # (B, L) -> the flat indices of the N real tokens
    x = pk.pack(states)         # (B, L, D) -> (N, D)
    x = bert_layer(layer, x, pk)               # token-wise parts on (N, D); attention on (B, H, L, d)
    states = pk.unpack(x)       # (N, D) -> (B, L, D), zeros at the padding
    cls = encoder_layer(last, x, pk, first_only=True)   # (B, D): a last layer read out at its first token

The layers' own modules and weights are used as they are (a Hugging Face `BertLayer`, a torch
`nn.TransformerEncoderLayer`), so checkpoints do not change; outputs at the real tokens equal the padded
forward up to float rounding (tests/test_packed.py). Dropout draws fewer random numbers, as it should.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from vlrb.backbones.dropout import fast_dropout


def rows_multiple(x: torch.Tensor) -> int:
    """64 where the matrix products of `x` run in bf16 on a CPU (oneDNN compiles a kernel for every new row count,
    3-10 ms each, and packed row counts change from batch to batch), else 1."""
    on_cpu = x.device.type == "cpu"
    return 64 if on_cpu and (x.dtype == torch.bfloat16 or torch.is_autocast_enabled("cpu")) else 1


class Packing:
    """The real tokens of a (B, L) padding mask (1 = real) as one flat index, and the key mask attention needs."""

    def __init__(self, mask: torch.Tensor, multiple: int = 1):
        self.batch, self.length = int(mask.shape[0]), int(mask.shape[1])
        real = mask.bool()
        index = real.reshape(-1).nonzero().squeeze(1)
        self.n = int(index.numel())
        extra = -self.n % multiple
        full = self.n == real.numel()
        self.dense = full and not extra  # no padding: pack and unpack are reshapes
        # `multiple`: the packed rows rounded up with copies of the first token (computed, never read back), so
        # that oneDNN's bf16 matmuls, which compile a kernel per shape, meet few shapes (see `rows_multiple`)
        self.index = None if self.dense else torch.cat([index, index[:1].expand(extra)])
        self._real = real
        # (B, 1, 1, L) True where a key may be attended to; None lets SDPA take its unmasked kernels
        self.key_mask = None if full else real[:, None, None, :]

    @functools.cached_property
    def firsts(self) -> torch.Tensor:
        """The packed row of each sequence's first real token (a CLS read out by `encoder_layer(first_only=True)`)."""
        lengths = self._real.sum(1)
        return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(self.batch * self.length, *x.shape[2:])
        return flat if self.dense else flat.index_select(0, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dense:
            x = x.new_zeros(self.batch * self.length, *x.shape[1:]).index_copy_(0, self.index[:self.n], x[:self.n])
        return x.view(self.batch, self.length, *x.shape[1:])

    def attention(self, qkv: torch.Tensor, heads: int, dropout: float, scale: float | None = None) -> torch.Tensor:
        """Multi-head self-attention of packed (N, 3D) query-key-value projections -> packed (N, D)."""
        q, k, v = self.unpack(qkv).view(self.batch, self.length, 3, heads, -1).permute(2, 0, 3, 1, 4)
        out = self._attend(q, k, v, dropout, scale)
        return self.pack(out.transpose(1, 2).reshape(self.batch, self.length, -1))

    def first_token_attention(self, q: torch.Tensor, kv: torch.Tensor, heads: int, dropout: float,
                              scale: float | None = None) -> torch.Tensor:
        """Attention for each sequence's first token only: its (B, D) queries over packed (N, 2D) key-value
        projections -> (B, D). The first token's rows of `attention`, without the queries nobody reads."""
        k, v = self.unpack(kv).view(self.batch, self.length, 2, heads, -1).permute(2, 0, 3, 1, 4)
        out = self._attend(q.view(self.batch, 1, heads, -1).transpose(1, 2), k, v, dropout, scale)
        return out.reshape(self.batch, -1)

    def _attend(self, q, k, v, dropout: float, scale: float | None) -> torch.Tensor:
        """(B, H, Lq, d) queries over (B, H, L, d) keys and values, the padding masked as keys."""
        if dropout > 0.0 and q.device.type == "cpu":  # SDPA's CPU dropout is torch's slow mask: the same maths
            w = (q * (q.shape[-1] ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1)
            if self.key_mask is not None:
                w.masked_fill_(~self.key_mask, float("-inf"))
            return fast_dropout(w.softmax(-1), dropout) @ v
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.key_mask, dropout_p=dropout, scale=scale)


def bert_layer(layer: nn.Module, x: torch.Tensor, pk: Packing) -> torch.Tensor:
    """A Hugging Face `BertLayer` (post-LayerNorm encoder layer, self-attention only) on packed states."""
    sa = layer.attention.self
    # query, key and value as one matrix product (their weights concatenated: a copy of 3 D x D, cheap)
    qkv = F.linear(x, torch.cat([sa.query.weight, sa.key.weight, sa.value.weight]),
                   torch.cat([sa.query.bias, sa.key.bias, sa.value.bias]))
    a = pk.attention(qkv, sa.num_attention_heads, sa.dropout.p if sa.training else 0.0, sa.scaling)
    x = layer.attention.output(a, x)  # dense, dropout, LayerNorm(. + x): token-wise
    return layer.output(layer.intermediate(x), x)


def encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, pk: Packing,
                  first_only: bool = False) -> torch.Tensor:
    """A torch `nn.TransformerEncoderLayer` (batch_first, pre- or post-norm) on packed states (N, D) -> (N, D).

    `first_only`: only each sequence's first token's output, (B, D) (a last layer read out at its CLS): every
    token still serves as key and value, but the query, the output projection and the feed-forward run on B
    rows instead of N, the same numbers as the full layer's rows `pk.firsts`."""
    attn = layer.self_attn
    drop = attn.dropout if layer.training else 0.0

    def sa_block(y):
        if not first_only:
            qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
            return layer.dropout1(attn.out_proj(pk.attention(qkv, attn.num_heads, drop)))
        d = y.shape[-1]
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q = F.linear(y[pk.firsts], w[:d], None if b is None else b[:d])
        kv = F.linear(y, w[d:], None if b is None else b[d:])
        return layer.dropout1(attn.out_proj(pk.first_token_attention(q, kv, attn.num_heads, drop)))

    def ff_block(y):
        return layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(y)))))

    residual = x[pk.firsts] if first_only else x
    if layer.norm_first:
        x = residual + sa_block(layer.norm1(x))
        return x + ff_block(layer.norm2(x))
    x = layer.norm1(residual + sa_block(x))
    return layer.norm2(x + ff_block(x))
