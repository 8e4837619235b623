"""Where each output pixel of a merge band reads the canvas: its 2x2 canvas cell and weights.

The canvas resize of :mod:`.resample` gives output pixel ``(y, x)`` the bilinear blend of canvas
rows ``row0[y], row1[y]`` and columns ``col0[x], col1[x]``: the horizontal taps first, then the
vertical ones, each pair rounded as :func:`~.resample.lerp` rounds it. :meth:`CellGrid.interpolate`
evaluates exactly that for any class at any pixels, so a pixel's score for one class costs four
reads instead of a resize of every class. :meth:`CellGrid.contenders` bounds each class's score
over every cell: a blend lies between the minimum and the maximum of its four corners.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .resample import LinearTaps, lerp, linear_taps


@dataclass(frozen=True)
class CellGrid:
    """The canvas cells of a band of output rows (canvas rows relative to the band's first)."""

    row0: np.ndarray    # (rows,) the cell's top canvas row per output row
    row1: np.ndarray    # (rows,) its bottom row (the same row at the canvas's last row)
    row_w0: np.ndarray  # (rows,) float32 weights of row0 and row1
    row_w1: np.ndarray
    col0: np.ndarray    # (width,) the cell's left and right canvas columns per output column
    col1: np.ndarray
    col_w0: np.ndarray
    col_w1: np.ndarray
    canvas_cols: int
    row_cell: np.ndarray  # (rows,) index of the output row's cell row among the distinct ones
    col_cell: np.ndarray  # (width,) likewise for columns

    @classmethod
    def of(cls, rows: LinearTaps, first: int, canvas_cols: int, width: int,
           flipped: bool) -> CellGrid:
        """The grid of output rows ``rows`` (taps into canvas rows from ``first`` on) and
        ``width`` output columns from ``canvas_cols``, mirrored for a flipped view."""
        cols = linear_taps(canvas_cols, width)
        if flipped:
            cols = LinearTaps(cols.index0[::-1], cols.index1[::-1], cols.weight0[::-1],
                              cols.weight1[::-1])
        _, row_cell = np.unique(rows.index0, return_inverse=True)
        _, col_cell = np.unique(cols.index0, return_inverse=True)
        return cls(rows.index0 - first, rows.index1 - first, rows.weight0, rows.weight1,
                   cols.index0, cols.index1, cols.weight0, cols.weight1, canvas_cols,
                   row_cell=row_cell.reshape(-1), col_cell=col_cell.reshape(-1))

    def _distinct(self, index0: np.ndarray, index1: np.ndarray,
                  cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (index0, index1) pair of each distinct cell, in cell order."""
        order = np.zeros(cell.max() + 1, np.int64)
        order[cell] = np.arange(len(cell))
        return index0[order], index1[order]

    def contenders(self, canvas: np.ndarray,
                   margin: np.float32) -> tuple[np.ndarray, np.ndarray]:
        """For each distinct cell: the class whose minimum over the cell's corners is highest,
        and which classes' maximum comes within ``margin`` of that minimum ((C, cells) bool:
        only these can win or tie anywhere in the cell)."""
        top, bottom = self._distinct(self.row0, self.row1, self.row_cell)
        left, right = self._distinct(self.col0, self.col1, self.col_cell)
        upper, lower = canvas[:, top], canvas[:, bottom]
        high_rows, low_rows = np.maximum(upper, lower), np.minimum(upper, lower)
        high = np.maximum(high_rows[:, :, left], high_rows[:, :, right])
        low = np.minimum(low_rows[:, :, left], low_rows[:, :, right])
        winner = low.argmax(0)
        best = np.take_along_axis(low, winner[None], 0)
        return winner, high >= best - margin

    def interpolate(self, values: np.ndarray, offset: np.ndarray | int = 0,
                    ys: np.ndarray | None = None, xs: np.ndarray | None = None) -> np.ndarray:
        """The resized value of every output pixel (or of pixels ``ys, xs``) from the flat
        canvas-shaped ``values`` at ``offset`` (a class's start, per pixel or shared)."""
        if ys is None or xs is None:
            r0, r1 = self.row0[:, None], self.row1[:, None]
            wr0, wr1 = self.row_w0[:, None], self.row_w1[:, None]
            c0, c1, wc0, wc1 = self.col0, self.col1, self.col_w0, self.col_w1
        else:
            r0, r1, wr0, wr1 = self.row0[ys], self.row1[ys], self.row_w0[ys], self.row_w1[ys]
            c0, c1, wc0, wc1 = self.col0[xs], self.col1[xs], self.col_w0[xs], self.col_w1[xs]
        upper = offset + r0 * self.canvas_cols
        lower = offset + r1 * self.canvas_cols
        top = lerp(values[upper + c0], wc0, values[upper + c1], wc1)
        bottom = lerp(values[lower + c0], wc0, values[lower + c1], wc1)
        return lerp(top, wr0, bottom, wr1)
