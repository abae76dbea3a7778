"""Decoded image chunks kept per process, so neighbouring spot tiles do not decode the same chunk again.

A spot tile is a small window (a few hundred pixels) of an image stored in chunks of typically 1024²
pixels. Asking dask for each window builds and runs a task graph (milliseconds) and decodes every chunk
the window touches, although the next spots, in table order, mostly sit in the same chunks. Here a window
is assembled from whole chunks, each computed once and kept in a least-recently-used store of bounded
size; images whose chunks are too large to keep are sliced through dask as before.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

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
    >>> w = cache.window("img", img, 2, 3, 5, 2, 6)
    >>> bool((w == img[:2, 3:5, 2:6].compute()).all()), len(cache)
    (True, 4)

    """

    def __init__(self, max_bytes: int = CHUNK_CACHE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self._chunks: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._chunks)

    def __getstate__(self) -> dict[str, Any]:
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_bytes"])

    def window(self, key: Any, arr: Any, c1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``arr[:c1, y0:y1, x0:x1]`` as a numpy array; ``key`` names ``arr`` among the reader's images.

        The box must lie inside the array. ``arr`` is a ``(c, y, x)`` dask array (other arrays are sliced
        directly).
        """
        if not hasattr(arr, "compute") or not hasattr(arr, "chunks"):
            return np.asarray(arr[:c1, y0:y1, x0:x1])
        ys, xs = np.cumsum((0, *arr.chunks[1])), np.cumsum((0, *arr.chunks[2]))
        chunk_bytes = arr.shape[0] * max(arr.chunks[1]) * max(arr.chunks[2]) * np.dtype(arr.dtype).itemsize
        if 4 * chunk_bytes > self.max_bytes:
            # One small window: the threaded scheduler's hand-off costs more than the read itself.
            return np.asarray(arr[:c1, y0:y1, x0:x1].compute(scheduler="synchronous"))
        out = np.empty((c1, y1 - y0, x1 - x0), dtype=arr.dtype)
        for by in range(np.searchsorted(ys, y0, "right") - 1, np.searchsorted(ys, y1 - 1, "right")):
            for bx in range(np.searchsorted(xs, x0, "right") - 1, np.searchsorted(xs, x1 - 1, "right")):
                block = self._chunk(key, arr, ys, xs, by, bx)
                ty0, ty1 = max(y0, ys[by]), min(y1, ys[by + 1])
                tx0, tx1 = max(x0, xs[bx]), min(x1, xs[bx + 1])
                out[:, ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = block[
                    :c1, ty0 - ys[by] : ty1 - ys[by], tx0 - xs[bx] : tx1 - xs[bx]
                ]
        return out

    def _chunk(self, key: Any, arr: Any, ys: np.ndarray, xs: np.ndarray, by: int, bx: int) -> np.ndarray:
        k = (key, int(by), int(bx))
        block = self._chunks.get(k)
        if block is not None:
            self._chunks.move_to_end(k)
            return block
        block = np.asarray(arr[:, ys[by] : ys[by + 1], xs[bx] : xs[bx + 1]].compute(scheduler="synchronous"))
        self._chunks[k] = block
        self._bytes += block.nbytes
        while self._bytes > self.max_bytes and len(self._chunks) > 1:
            _, old = self._chunks.popitem(last=False)
            self._bytes -= old.nbytes
        return block
