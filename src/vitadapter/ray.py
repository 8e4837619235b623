"""Ray Data integration: a predictor class for ``Dataset.map_batches``.

>>> import ray
>>> ds = ray.data.read_images("s3://bucket/photos/", include_paths=True)
>>> labels = ds.map_batches(RayPredictor, fn_constructor_kwargs={"model": PRESET},
...                         batch_size=8, num_gpus=1, concurrency=4)

Each Ray actor builds one :class:`~vitadapter.segmenter.Segmenter` (the model is loaded once
per actor) and segments every batch through the pipelined stream (:mod:`vitadapter.stream`);
its process keeps freed heap blocks for reuse, as the command line's
(:func:`~vitadapter.backends.host_memory.keep_freed_memory`).
The class itself is cheap to pickle: it holds the constructor arguments until Ray starts it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ImageError


class RayPredictor:
    """``{"image": [H x W x 3 uint8, ...], ...}`` in, the same dict plus ``"label_map"``
    (H x W class ids, uint8 or uint16) out. ``column`` names the image column; every
    keyword argument goes to :class:`~vitadapter.segmenter.Segmenter`."""

    def __init__(self, column: str = "image", **segmenter_kwargs: Any) -> None:
        from .backends.host_memory import keep_freed_memory
        from .segmenter import Segmenter

        keep_freed_memory()
        self.column = column
        self.segmenter = Segmenter(**segmenter_kwargs)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from .stream import segment_stream

        if self.column not in batch:
            raise ImageError(f"the batch has no {self.column!r} column (it has "
                             f"{', '.join(batch) or 'none'}): pass column=...")
        dtype = np.uint8 if len(self.segmenter.class_names) < 256 else np.uint16
        label_maps = []
        for _, result in segment_stream(self.segmenter, list(batch[self.column])):
            if isinstance(result, Exception):
                raise result
            label_maps.append(result.label_map.astype(dtype))
        return {**batch, "label_map": label_maps}
