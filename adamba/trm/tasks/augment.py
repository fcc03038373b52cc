"""The 8 symmetries of a square (dihedral group D4) on 2-D grids, with exact inverses.

Transform t in 0..7: t < 4 rotates by t quarter turns (counter-clockwise, numpy's rot90);
t >= 4 transposes first, then rotates by t - 4. Transforms 0, 2, 5, 7 keep a non-square grid's
shape; the others swap rows and columns.
"""

from __future__ import annotations

import numpy as np

SHAPE_KEEPING = (0, 2, 5, 7)


def dihedral(grid: np.ndarray, t: int) -> np.ndarray:
    if not 0 <= t < 8:
        raise ValueError(f"dihedral transform {t} is not in 0..7")
    g = grid.T if t >= 4 else grid
    return np.ascontiguousarray(np.rot90(g, t % 4))


def inverse_dihedral(grid: np.ndarray, t: int) -> np.ndarray:
    """dihedral(inverse_dihedral(g, t), t) == g: undo the rotation, then the transpose."""
    if not 0 <= t < 8:
        raise ValueError(f"dihedral transform {t} is not in 0..7")
    g = np.rot90(grid, -(t % 4))
    return np.ascontiguousarray(g.T if t >= 4 else g)
