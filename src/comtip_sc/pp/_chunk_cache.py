"""Decoded image chunks kept per process, so neighbouring spot tiles do not decode the same chunk again.

A spot tile is a small window (a few hundred pixels) of an image stored in chunks of typically 1024²
pixels. Asking dask for each window builds and runs a task graph (milliseconds) and decodes every chunk
the window touches, although the next spots, in table order, mostly sit in the same chunks. Here a window
is assembled from whole chunks, each computed once and kept in a least-recently-used store of bounded
size; images whose chunks are too large to keep are sliced through dask as before.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.local import get_sync
from dask.optimization import cull

# A callable scheduler: dask then skips looking for a distributed client on every compute (~5 ms a call).
_SYNC = get_sync

#: Images with at most this many chunks have their task graph built once and each chunk computed from it
#: (~1.5 ms a 1024² chunk); larger ones slice and compute through dask per chunk (~3.5 ms: a new graph
#: built, optimised and ordered every time), since their whole graph would cost more to hold.
GRAPH_CHUNKS_MAX = 65_536

#: Bytes of decoded chunks one reader keeps (each data-loader worker has its own): 40 chunks of 1024² RGB.
CHUNK_CACHE_BYTES = 128 * 2**20


class ChunkCache:
    """Least-recently-used store of decoded chunks of dask images, at most ``max_bytes``.

    Not shared between processes: pickling (into a data-loader worker) drops the stored chunks.

    Parameters
    ----------
    max_bytes
        Most bytes of decoded chunks held at once. An image whose chunks are larger than a quarter of it is
        read window by window instead.

    Examples
    --------
    >>> import dask.array as da
    >>> img = da.from_array(np.arange(2 * 6 * 6, dtype=np.uint8).reshape(2, 6, 6), chunks=(2, 4, 4))
    >>> cache = ChunkCache()
    >>> out = np.empty((2, 4, 2), np.uint8)  # rows 3:5, columns 2:6, channels last
    >>> cache.fill("img", img, lambda b: np.moveaxis(b, 0, -1), out, 3, 2)
    >>> bool((out == img[:, 3:5, 2:6].compute().transpose(1, 2, 0)).all()), len(cache), cache.decoded
    (True, 4, 4)

    """

    def __init__(self, max_bytes: int = CHUNK_CACHE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self._chunks: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        # Per image key: its chunk edges and task graph, built on its first read.
        self._layouts: dict[Any, _Layout] = {}
        #: Chunks decoded so far (a chunk evicted and needed again counts again).
        self.decoded = 0

    def __len__(self) -> int:
        return len(self._chunks)

    def __getstate__(self) -> dict[str, Any]:
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_bytes"])

    def fill(
        self,
        key: Any,
        arr: Any,
        prepare: Callable[[np.ndarray], np.ndarray],
        out: np.ndarray,
        y0: int,
        x0: int,
    ) -> None:
        """Write ``prepare(arr[:, y0:y0 + h, x0:x0 + w])`` into ``out`` (``(h, w, ...)``), chunk by chunk.

        ``prepare`` maps a ``(c, y, x)`` block to the ``(y, x, ...)`` layout and dtype of ``out`` (channel
        choice, scaling); the prepared chunks are what is kept, so each chunk is converted once, not once
        per window, and ``key`` must name ``arr`` together with ``prepare``.
        """
        y1, x1 = y0 + out.shape[0], x0 + out.shape[1]
        if not hasattr(arr, "compute") or not hasattr(arr, "chunks"):
            out[:] = prepare(np.asarray(arr[:, y0:y1, x0:x1]))
            return
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = _Layout.of(arr, self.max_bytes)
        ys, xs = layout.ys, layout.xs
        if layout.too_large:
            out[:] = prepare(np.asarray(arr[:, y0:y1, x0:x1].compute(scheduler=_SYNC)))
            return
        for by in range(bisect_right(ys, y0) - 1, bisect_right(ys, y1 - 1)):
            for bx in range(bisect_right(xs, x0) - 1, bisect_right(xs, x1 - 1)):
                block = self._chunk(key, layout, arr, by, bx, prepare)
                ty0, ty1 = max(y0, ys[by]), min(y1, ys[by + 1])
                tx0, tx1 = max(x0, xs[bx]), min(x1, xs[bx + 1])
                out[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = block[
                    ty0 - ys[by] : ty1 - ys[by], tx0 - xs[bx] : tx1 - xs[bx]
                ]

    def _chunk(
        self,
        key: Any,
        layout: _Layout,
        arr: Any,
        by: int,
        bx: int,
        prepare: Callable[[np.ndarray], np.ndarray],
    ) -> np.ndarray:
        k = (key, by, bx)
        block = self._chunks.get(k)
        if block is not None:
            self._chunks.move_to_end(k)
            return block
        block = prepare(layout.compute(arr, by, bx))
        self.decoded += 1
        self._chunks[k] = block
        self._bytes += block.nbytes
        while self._bytes > self.max_bytes and len(self._chunks) > 1:
            _, old = self._chunks.popitem(last=False)
            self._bytes -= old.nbytes
        return block


@dataclass
class _Layout:
    """Where one dask image's chunks start and end, and how to compute one of them.

    Built once per image and reader: recomputing the edges and a dask graph on every window cost more
    than reading the window from cached chunks.
    """

    ys: list[int]  # row edges of the chunks, 0 first
    xs: list[int]  # column edges
    too_large: bool  # chunks larger than a quarter of the cache: read window by window instead
    tasks: dict | None  # the image's task graph, when it is small enough to hold (else None)
    keys: Any  # dask's nested chunk keys, ``keys[0][by][bx]``

    @classmethod
    def of(cls, arr: Any, max_bytes: int) -> _Layout:
        ys = np.cumsum((0, *arr.chunks[1])).tolist()
        xs = np.cumsum((0, *arr.chunks[2])).tolist()
        chunk_bytes = arr.shape[0] * max(arr.chunks[1]) * max(arr.chunks[2]) * np.dtype(arr.dtype).itemsize
        small_graph = arr.numblocks[0] == 1 and int(np.prod(arr.numblocks)) <= GRAPH_CHUNKS_MAX
        tasks = dict(arr.__dask_graph__()) if small_graph else None
        return cls(ys, xs, 4 * chunk_bytes > max_bytes, tasks, arr.__dask_keys__() if small_graph else None)

    def compute(self, arr: Any, by: int, bx: int) -> np.ndarray:
        """Chunk ``(by, bx)`` of ``arr`` (all its channels) as a numpy array."""
        if self.tasks is None:
            rows, cols = slice(self.ys[by], self.ys[by + 1]), slice(self.xs[bx], self.xs[bx + 1])
            return np.asarray(arr[:, rows, cols].compute(scheduler=_SYNC))
        chunk_key = self.keys[0][by][bx]
        # The chunk's task and what it depends on (for a zarr image: the array handle), nothing else.
        return np.asarray(_SYNC(cull(self.tasks, [chunk_key])[0], chunk_key))
