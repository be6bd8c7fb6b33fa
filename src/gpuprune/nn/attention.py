"""SkipMultiheadAttention: an ``nn.MultiheadAttention`` whose projections run the skip kernels.

``nn.MultiheadAttention`` hands its bare ``in_proj_weight`` and ``out_proj.weight`` to
``F.multi_head_attention_forward``, so no skip layer could run inside it. :func:`gpuprune.compile`
replaces it by this module: q, k and v come from three projection layers (skip-kernel linears
for a pruned input projection, plain linears otherwise), attention is
``F.scaled_dot_product_attention`` (or, when the weights are asked for, the same math as
``F.multi_head_attention_forward``), then ``out_proj``. It keeps what code reads from the module
it replaces: ``in_proj_weight``/``in_proj_bias`` (dense, read-only copies), ``out_proj.weight``,
``batch_first``, ``num_heads``, ``_qkv_same_embed_dim``... so ``nn.TransformerEncoderLayer`` and
torchvision's ViT blocks call it unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpuprune.errors import UserError


def unsupported(mha: nn.MultiheadAttention) -> str | None:
    """Why ``mha`` cannot become a :class:`SkipMultiheadAttention`, or None when it can."""
    if mha.bias_k is not None:
        return "MultiheadAttention with add_bias_kv=True is not supported by the skip attention"
    if mha.add_zero_attn:
        return "MultiheadAttention with add_zero_attn=True is not supported by the skip attention"
    return None


def _float_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True: not attended) as the additive float mask torch makes of it."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        mask, float("-inf"))  # fmt: skip


class SkipMultiheadAttention(nn.Module):
    """Multi-head attention over given q/k/v/out projection layers (inference only).

    Args:
        q_proj, k_proj, v_proj: layers mapping ``[..., E_q]``, ``[..., kdim]``, ``[..., vdim]``
            to ``[..., embed_dim]`` (SkipLinear or nn.Linear).
        out_proj: ``[..., embed_dim] -> [..., embed_dim]``.
        num_heads, batch_first: as the replaced module's.
    """

    def __init__(self, q_proj: nn.Module, k_proj: nn.Module, v_proj: nn.Module,
                 out_proj: nn.Module, num_heads: int, batch_first: bool) -> None:  # fmt: skip
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.embed_dim = int(q_proj.weight.shape[0])
        self.kdim, self.vdim = int(k_proj.weight.shape[1]), int(v_proj.weight.shape[1])
        self._qkv_same_embed_dim = self.kdim == self.embed_dim == self.vdim
        self.num_heads = num_heads
        self.head_dim = self.embed_dim // num_heads
        self.batch_first = batch_first
        self.dropout = 0.0  # inference only: a compiled model refuses .train()
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self._in_proj: tuple[Tensor, Tensor | None] | None = None  # dense copies, built once

    @classmethod
    def from_module(cls, mha: nn.MultiheadAttention, q_proj: nn.Module, k_proj: nn.Module,
                    v_proj: nn.Module, out_proj: nn.Module) -> SkipMultiheadAttention:  # fmt: skip
        """Replace ``mha`` with these projections.

        Raises:
            UserError: an option the skip attention does not run (add_bias_kv, add_zero_attn).
        """
        why = unsupported(mha)
        if why is not None:
            raise UserError(why, "leave this attention dense (gpuprune.compile does so itself)")
        return cls(q_proj, k_proj, v_proj, out_proj, mha.num_heads, mha.batch_first)

    def _dense_in_proj(self) -> tuple[Tensor, Tensor | None]:
        parts = (self.q_proj, self.k_proj, self.v_proj)
        if self._in_proj is None or self._in_proj[0].device != parts[0].weight.device:
            biases = [p.bias for p in parts]
            bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
            self._in_proj = (torch.cat([p.weight.detach() for p in parts]), bias)
        return self._in_proj

    @property
    def in_proj_weight(self) -> Tensor | None:
        """The masked dense [3E, E] input projection (a copy: edits do nothing); None when
        kdim/vdim differ from embed_dim (then ``q/k/v_proj_weight``)."""
        return self._dense_in_proj()[0] if self._qkv_same_embed_dim else None

    @property
    def in_proj_bias(self) -> Tensor | None:
        return self._dense_in_proj()[1]

    @property
    def q_proj_weight(self) -> Tensor | None:
        return None if self._qkv_same_embed_dim else self.q_proj.weight

    @property
    def k_proj_weight(self) -> Tensor | None:
        return None if self._qkv_same_embed_dim else self.k_proj.weight

    @property
    def v_proj_weight(self) -> Tensor | None:
        return None if self._qkv_same_embed_dim else self.v_proj.weight

    # nn.TransformerEncoderLayer's fused fast path asks its self_attn to merge the masks
    merge_masks = nn.MultiheadAttention.merge_masks

    def train(self, mode: bool = True) -> SkipMultiheadAttention:
        if mode:
            raise UserError(
                "a compiled model cannot be trained (its skip layers hold packed, frozen weights)",
                "train the masked model, then compile again",
            )
        return super().train(False)

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
        need_weights: bool = True, attn_mask: Tensor | None = None,
        average_attn_weights: bool = True, is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """As ``nn.MultiheadAttention.forward`` (batched or unbatched inputs)."""
        batched = query.dim() == 3
        if not batched:  # [L, E]: one sample
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # [L, N, E] -> [N, L, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, tgt, _ = query.shape
        src = key.shape[1]
        heads, dim = self.num_heads, self.head_dim
        q = self.q_proj(query).reshape(n, tgt, heads, dim).transpose(1, 2)  # [N, H, L, D]
        k = self.k_proj(key).reshape(n, src, heads, dim).transpose(1, 2)
        v = self.v_proj(value).reshape(n, src, heads, dim).transpose(1, 2)
        mask = self._mask(key_padding_mask, attn_mask, is_causal, q, n, tgt, src)
        weights = None
        if need_weights:  # the math of F.multi_head_attention_forward
            scores = (q * math.sqrt(1.0 / float(dim))) @ k.transpose(-2, -1)
            attn = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            out = attn @ v
            weights = attn.mean(dim=1) if average_attn_weights else attn
            weights = weights if batched else weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.out_proj(out.transpose(1, 2).reshape(n, tgt, self.embed_dim))
        if not batched:
            return out.squeeze(0), weights
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _mask(self, key_padding_mask: Tensor | None, attn_mask: Tensor | None, is_causal: bool,
              q: Tensor, n: int, tgt: int, src: int) -> Tensor | None:  # fmt: skip
        """key_padding_mask and attn_mask as one additive [N or 1, H or 1, L, S] float mask."""
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(tgt, src, dtype=torch.bool, device=q.device).triu(1)
        mask = _float_mask(attn_mask, q.dtype)
        if mask is not None:
            if mask.dim() == 2:  # [L, S]
                mask = mask.reshape(1, 1, tgt, src)
            elif mask.dim() == 3:  # [N * H, L, S]
                mask = mask.reshape(n, self.num_heads, tgt, src)
            else:
                raise UserError(f"attn_mask has {mask.dim()} dimensions",
                                "pass a [L, S] or [N * num_heads, L, S] mask")  # fmt: skip
        pad = _float_mask(key_padding_mask, q.dtype)
        if pad is not None:
            pad = pad.reshape(n, 1, 1, src)
            mask = pad if mask is None else mask + pad
        return mask

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"batch_first={self.batch_first}")  # fmt: skip


__all__ = ["SkipMultiheadAttention", "unsupported"]
