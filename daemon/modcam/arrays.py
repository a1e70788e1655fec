"""Argument handling shared by the C kernels' Python wrappers (raw12, demosaic,
the ISP): row ranges for strip-wise calls, and row strides of numpy arrays."""
import operator

import numpy as np


def check_rows(rows, height: int) -> tuple[int, int]:
    """(start, stop) of a strip within `height` rows; None means all of them."""
    if rows is None:
        return 0, height
    try:
        r0, r1 = (operator.index(r) for r in rows)
    except (TypeError, ValueError):
        raise ValueError(f"rows must be a pair of integers (start, stop), not {rows!r}") from None
    if not 0 <= r0 <= r1 <= height:
        raise ValueError(f"rows ({r0}, {r1}) is not a range within the image's {height} rows")
    return r0, r1


def row_stride(a: np.ndarray) -> int:
    """Bytes from one row to the next; a single row's stride is just its length."""
    return a.strides[0] if a.shape[0] > 1 else a[0].nbytes
