"""``BinaryAttentionSite``: the module every rewritten attention site calls.

What it does: holds one site's description (where it came from, which matcher fired, its
shapes) and its op options as one ``AttentionOptions`` (causality, scale, binarizer,
temperature, ste_clip, top_n, ...) that training replaces between steps (``set_options``), the
static q/k scales as buffers, and its mode. ``forward(q, k, v, attn_mask, bias, sinks)`` runs
:func:`binattn.ops.binary_attention_with` — which exports as
``torch.ops.binattn.binary_attention`` — or, with ``mode = "float"``, exact full-precision softmax
attention on the same inputs, soft cap and sinks (the teacher of self-distillation). With
``record_probs`` it keeps the attention probabilities of the last forward in ``last_probs``.

What it does not: find sites or own the learned bias (the bias module is a sibling submodule of
the GraphModule named ``binattn_bias_<i>``; its output arrives as ``bias``, or, for a
``RelPosBias``, its table as ``bias`` and its index as ``bias_index``).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops import reference
from ..ops.options import OPTION_NAMES, AttentionOptions, AttentionTensors, option_properties


class BinaryAttentionSite(nn.Module):
    """One attention site rewritten to 1-bit query/key attention.

    ``options`` (an :class:`AttentionOptions`) holds every op option of the site; training
    changes them between steps with :meth:`set_options` (or by assigning ``site.top_n = 5`` and
    the like: each option name is a property that replaces ``options``). ``q_scale``/``k_scale``
    are buffers (HAD's calibrated static scales).
    """

    def __init__(self, *, index: int, module_path: str, matcher: str, shape: dict,
                 options: AttentionOptions = AttentionOptions(), mode: str = "binary"):
        super().__init__()
        self.index, self.module_path, self.matcher = index, module_path, matcher
        self.shape = dict(shape)
        self.options = options
        self.mode = mode
        self.record_probs = False
        self.returns_probs = False   # set by the pass where the graph also uses the weights
        self.last_probs: Optional[torch.Tensor] = None
        self.register_buffer("q_scale", None)
        self.register_buffer("k_scale", None)

    def __setstate__(self, state: dict) -> None:
        """Sites pickled before ``options`` kept each option as an attribute: gather them."""
        if "options" not in state:
            old = {name: state.pop(name) for name in OPTION_NAMES if name in state}
            state["options"] = AttentionOptions(**old)
        super().__setstate__(state)

    def set_options(self, **changes: Any) -> None:
        """Replace ``options`` by a checked copy with ``changes`` (option names only): the way
        to change a site's options between training steps."""
        self.options = self.options.replace(**changes)

    def extra_repr(self) -> str:
        s = self.shape
        return (f"index={self.index}, path={self.module_path!r}, matcher={self.matcher!r}, "
                f"B={s.get('B')}, Hq={s.get('Hq')}, Hkv={s.get('Hkv')}, Nq={s.get('Nq')}, "
                f"Nk={s.get('Nk')}, D={s.get('D')}, scale={self.options.scale}, "
                f"causal={self.options.is_causal}, mode={self.mode!r}")

    def _tensors(self, attn_mask, bias, bias_index, sinks=None) -> AttentionTensors:
        return AttentionTensors(bias=bias, attn_mask=attn_mask, q_scale=self.q_scale,
                                k_scale=self.k_scale, bias_index=bias_index, sinks=sinks)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                attn_mask: Optional[torch.Tensor] = None,
                bias: Optional[torch.Tensor] = None,
                bias_index: Optional[torch.Tensor] = None,
                sinks: Optional[torch.Tensor] = None):
        """The attention output; ``(output, probs)`` where ``returns_probs`` is set. ``sinks``:
        the model's per-head sink logits ``[Hq]`` (GPT-OSS), passed to the op."""
        need_probs = self.record_probs or self.returns_probs
        if self.mode == "float":
            out, probs = self._float_attention(q, k, v, attn_mask, need_probs, sinks)
        elif need_probs:
            out, probs = self._binary_with_probs(q, k, v, attn_mask, bias, bias_index, sinks)
        else:
            out, probs = ops.binary_attention_with(
                q, k, v, self._tensors(attn_mask, bias, bias_index, sinks), self.options), None
        return self._finish(out, probs, q, v)

    def _finish(self, out: torch.Tensor, probs: Optional[torch.Tensor], q: torch.Tensor,
                v: torch.Tensor):
        """The site's result: the output in the op's memory layout ([B, N, H, D] for 4-D, what
        the pass's graph glue relies on, whichever path computed it), probs where asked."""
        if out.dim() == 4:
            out = reference.in_output_layout(out, q, v)
        if self.record_probs:
            self.last_probs = probs
        return (out, probs) if self.returns_probs else out

    def _binary_with_probs(self, q, k, v, attn_mask, bias, bias_index, sinks=None):
        """The reference op with its probabilities (same math as the custom op, differentiable)."""
        squeeze = q.dim() == 3
        q4, k4, v4, m4, b4 = (x.unsqueeze(1) if squeeze and x is not None and x.dim() == 3 else x
                              for x in (q, k, v, attn_mask, bias))
        out, probs = reference.binary_attention(
            q4, k4, v4, self._tensors(m4, b4, bias_index, sinks), self.options,
            return_probs=True)
        return (out.squeeze(1), probs.squeeze(1)) if squeeze else (out, probs)

    def _float_attention(self, q, k, v, attn_mask, need_probs: bool, sinks=None):
        """Exact full-precision softmax attention on the same q, k, v, mask and scale (and the
        soft cap and sinks where the site has them: what the model computed)."""
        is_causal, scale = self.options.is_causal, self.options.scale
        gqa = q.dim() == 4 and q.shape[1] != k.shape[1]
        if not need_probs and sinks is None and self.options.soft_cap is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                                  is_causal=is_causal, scale=scale,
                                                  enable_gqa=gqa), None
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        if gqa:
            k, v = (reference.expand_kv_heads(x, q.shape[1]) for x in (k, v))
        scores = reference.soft_capped((q @ k.transpose(-2, -1)) * scale, self.options.soft_cap)
        mask = reference.additive_mask(attn_mask, is_causal, q.shape[-2], k.shape[-2],
                                       scores.dtype, q.device)
        scores = scores if mask is None else scores + mask
        if sinks is None:
            probs = torch.softmax(scores, dim=-1)
        else:
            column = reference.sink_column(sinks, scores)
            probs = torch.softmax(torch.cat([scores, column], dim=-1), dim=-1)[..., :-1]
        return probs @ v, probs


option_properties(BinaryAttentionSite)
