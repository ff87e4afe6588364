"""Row layout: any ``[..., V]`` tensor as rows addressed by two strides, without copying.

Row ``r`` of the flattened ``[N, V]`` view starts at
``(r // inner_size) * outer_stride + (r % inner_size) * inner_stride``. That covers contiguous
tensors, row slices and sliced ``[B, T, V]`` views (``logits[:, :-1]``); anything else is copied once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class RowLayout(NamedTuple):
    n_rows: int
    vocab: int
    inner_size: int
    outer_stride: int
    inner_stride: int

    def as_3d(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (laid out as described by self) as a ``[outer, inner, V]`` strided view."""
        outer = self.n_rows // self.inner_size if self.inner_size else 0
        return t.as_strided(
            (outer, self.inner_size, self.vocab),
            (self.outer_stride, self.inner_stride, 1),
            t.storage_offset(),
        )

    def contiguous(self) -> RowLayout:
        """The same row decomposition over a contiguous ``[N, V]`` buffer (e.g. a fresh gradient)."""
        return self._replace(outer_stride=self.inner_size * self.vocab, inner_stride=self.vocab)

    def rows_overlap(self) -> bool:
        """True when two rows share memory (expanded or overlapping strides)."""
        outer = self.n_rows // self.inner_size if self.inner_size else 0
        if self.inner_size > 1 and self.inner_stride < self.vocab:
            return True
        return outer > 1 and self.outer_stride < self.inner_size * max(self.inner_stride, self.vocab)


def _collapsed_dims(sizes, strides):
    """Merge leading dims that are contiguous with respect to each other; drop size-1 dims."""
    dims: list[list[int]] = []
    for size, stride in zip(sizes, strides):
        if size == 1:
            continue
        if dims and dims[-1][1] == size * stride:
            dims[-1] = [dims[-1][0] * size, stride]
        else:
            dims.append([size, stride])
    return dims


def row_layout(logits: torch.Tensor) -> RowLayout | None:
    """The two-stride layout of ``logits``, or None when it needs a copy first."""
    vocab = logits.shape[-1]
    n_rows = logits.numel() // vocab if vocab else 0
    if logits.stride(-1) != 1 and vocab > 1:
        return None
    if n_rows == 0:
        return RowLayout(0, vocab, 0, vocab, vocab)
    dims = _collapsed_dims(logits.shape[:-1], logits.stride()[:-1])
    if len(dims) > 2:
        return None
    while len(dims) < 2:
        dims.insert(0, [1, n_rows * vocab])
    (_, outer_stride), (inner_size, inner_stride) = dims
    return RowLayout(n_rows, vocab, inner_size, outer_stride, inner_stride)


def with_row_layout(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` itself when it has a two-stride layout, else one contiguous (differentiable) copy."""
    return logits if row_layout(logits) is not None else logits.contiguous()
