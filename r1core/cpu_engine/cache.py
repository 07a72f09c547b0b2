"""The engine's KV cache: a transformers ``DynamicCache`` whose full-attention layers write into
buffers allocated once (:class:`PreallocatedLayer`), rows leaving compacted in place."""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def new_cache(model):
    """A transformers ``DynamicCache`` whose full-attention layers are :class:`PreallocatedLayer`."""
    cache = DynamicCache(config=model.config)
    cache.layers = [PreallocatedLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def cache_keyword(model) -> str:
    """The keyword ``model``'s forward takes its KV cache by: ``cache`` where the forward names it
    (transformers 5.x from the rename on, which deprecates ``past_key_values`` with a
    ``FutureWarning`` on every call, for removal in 5.40), else ``past_key_values`` (earlier 5.x
    releases, and wrappers whose forward takes ``**kwargs`` only)."""
    return _cache_keyword(type(model))


@functools.lru_cache(maxsize=None)
def _cache_keyword(cls: type) -> str:
    try:
        parameters = inspect.signature(cls.forward).parameters  # follows the deprecation wrapper to the forward
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` writing into buffers allocated once (``(B, H, capacity, D)``) instead of
    concatenating a new copy of the whole cache every step (that copy was 45% of a SmolLM2 decode
    step at batch 64 and 300 tokens of context). ``keys``/``values`` are views of the filled part of
    the first ``_rows`` rows; rows that leave are compacted in place (:meth:`batch_select_indices`)."""

    def _allocate(self, like: torch.Tensor, rows: int, capacity: int) -> None:
        self.dtype, self.device, self.is_initialized = like.dtype, like.device, True
        self._keys = like.new_zeros((rows, like.shape[1], capacity, like.shape[3]))
        self._values = like.new_zeros((rows, like.shape[1], capacity, like.shape[3]))
        self._length, self._rows = 0, rows

    def _set_views(self) -> None:
        self.keys = self._keys[: self._rows, :, : self._length]
        self.values = self._values[: self._rows, :, : self._length]

    def place(self, part, *, rows: tuple[int, int], total_rows: int, width: int, capacity: int) -> None:
        """Copy a pre-filled chunk's cache into rows ``rows``, right-aligned at ``width`` tokens."""
        if not self.is_initialized:
            self._allocate(part.keys, total_rows, max(capacity, width))
        n = part.keys.shape[2]
        self._keys[rows[0] : rows[1], :, width - n : width] = part.keys
        self._values[rows[0] : rows[1], :, width - n : width] = part.values
        self._length = width
        self._set_views()

    def place_row(self, part, *, row: int, source_row: int, columns: tuple[int, int]) -> None:
        """Copy the first ``columns[1] - columns[0]`` cache columns of ``part``'s row ``source_row``
        into this cache's row ``row`` at ``columns`` (a shared prefix next to the row's rest)."""
        n = columns[1] - columns[0]
        self._keys[row, :, columns[0] : columns[1]] = part.keys[source_row, :, :n]
        self._values[row, :, columns[0] : columns[1]] = part.values[source_row, :, :n]

    def reserve(self, columns: int) -> int:
        """Make room for ``columns`` more columns (growing the buffers by doubling past their
        capacity); returns the first of them."""
        end = self._length + columns
        if end > self._keys.shape[2]:
            grow = max(end, 2 * self._keys.shape[2]) - self._keys.shape[2]
            self._keys = torch.cat([self._keys, self._keys.new_zeros((*self._keys.shape[:2], grow, self._keys.shape[3]))], 2)
            self._values = torch.cat([self._values, self._values.new_zeros((*self._values.shape[:2], grow, self._values.shape[3]))], 2)
        return self._length

    def advance(self, columns: int) -> None:
        """Mark ``columns`` more columns filled (written into the buffers directly, as by
        :class:`r1core.cpu_engine.decoder.CpuDecoder`)."""
        self._length += columns
        self._set_views()  # (B, H, T, D) views

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self._allocate(key_states, key_states.shape[0], key_states.shape[2])
        start = self.reserve(key_states.shape[2])
        self._keys[: self._rows, :, start : start + key_states.shape[2]] = key_states
        self._values[: self._rows, :, start : start + key_states.shape[2]] = value_states
        self.advance(key_states.shape[2])
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (or repeat) rows ``indices``. Rows leaving (``indices`` strictly increasing) are
        compacted in place, filled columns only: a new buffer costs a copy of the whole capacity
        plus its page faults (1.2 s a drop at 56 rows x 705 columns x 30 layers)."""
        if not self.is_initialized:
            return
        keep = indices.tolist()
        if all(b > a for a, b in zip(keep, keep[1:])) and (not keep or keep[-1] < self._rows):
            for dst, src, n in _row_moves(keep):
                for buf in (self._keys, self._values):
                    buf[dst : dst + n, :, : self._length] = buf[src : src + n, :, : self._length]
        else:
            self._keys, self._values = self._keys[indices], self._values[indices]
        self._rows = len(keep)
        self._set_views()


def _row_moves(keep: list[int]) -> list[tuple[int, int, int]]:
    """In-place moves ``(destination row, source row, rows)`` that bring rows ``keep`` (strictly
    increasing) to rows ``0 .. len(keep) - 1``, in an order where no move overwrites a row that a
    later move reads, and no move's source overlaps its own destination."""
    moves: list[tuple[int, int, int]] = []
    dst = 0
    while dst < len(keep):
        shift, n = keep[dst] - dst, 1
        while dst + n < len(keep) and keep[dst + n] - (dst + n) == shift:
            n += 1
        if shift:  # a run with one shift; overlapping runs go in pieces of `shift` rows
            moves += [(d, d + shift, min(shift, dst + n - d)) for d in range(dst, dst + n, shift)]
        dst += n
    return moves


def select_rows(cache, rows: torch.Tensor) -> None:
    """Keep (or repeat) batch rows ``rows`` of every layer of a transformers cache."""
    for layer in cache.layers:
        layer.batch_select_indices(rows)
