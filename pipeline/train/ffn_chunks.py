"""The feed-forward network of each block over chunks of tokens.

The FFN widens every token to ``ffn_dim`` (13,824 for Wan 14B, 2.7x the model width), so one
block's recomputed FFN internals are a large share of a training step's peak. With
``ffn_chunks`` = c the block's FFN runs on c slices of the token axis, each under its own
(non-reentrant) gradient checkpoint: only one slice's widened internals exist at a time, in the
forward and in the backward, at the cost of one more FFN forward per block in the backward.

The FFN acts on each token alone, so the output is the same; the LoRA gradients of the FFN are
summed slice by slice instead of in one matrix product, which changes their rounding (float32
rounding, not the result).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

_ORIGINAL = "_vlp_unchunked_forward"


def chunk_feed_forward(ffn: torch.nn.Module, chunks: int) -> None:
    """Make ``ffn`` (a block's ``FeedForward``) run over ``chunks`` slices of dim 1 (tokens)."""
    original = getattr(ffn, _ORIGINAL, None) or ffn.forward
    if chunks <= 1:
        if hasattr(ffn, _ORIGINAL):
            ffn.forward = original
            delattr(ffn, _ORIGINAL)
        return
    setattr(ffn, _ORIGINAL, original)

    def forward(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if hidden_states.shape[1] < chunks:
            return original(hidden_states, *args, **kwargs)
        parts = hidden_states.chunk(chunks, dim=1)
        if torch.is_grad_enabled():
            outs = [checkpoint(original, p, *args, use_reentrant=False, **kwargs) for p in parts]
        else:
            outs = [original(p, *args, **kwargs) for p in parts]
        return torch.cat(outs, dim=1)

    ffn.forward = forward
