"""NumPy reference implementations of the custom ops (what the kernels are tested against)."""
from __future__ import annotations

import numpy as np


def address_conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, address: np.ndarray,
                     group: int = 1, strides=(1, 1), residual: np.ndarray | None = None,
                     clip_min: float = -np.inf, clip_max: float = np.inf) -> np.ndarray:
    """AddressConv in float64: input channel k = X[:, address[k,0]] read at
    (i*sh + address[k,1], j*sw + address[k,2]) for output (i, j), zero outside; then a grouped 1x1 conv,
    + B, + residual, clamped to [clip_min, clip_max]."""
    x = np.asarray(x, np.float64)
    n, csrc, h, wd = x.shape
    address = np.asarray(address, np.int64)
    if address.ndim != 2 or address.shape[1] != 3:
        raise ValueError(f"address must be [Cin, 3], got {address.shape}")
    if address.shape[0] and (address[:, 0].min() < 0 or address[:, 0].max() >= csrc):
        raise ValueError("address source channel out of range")
    sh, sw = strides
    ho, wo = -(-h // sh), -(-wd // sw)
    cin = address.shape[0]
    gathered = np.zeros((n, cin, ho, wo))
    rows = np.arange(ho)[:, None] * sh
    cols = np.arange(wo)[None, :] * sw
    for k, (src, dy, dx) in enumerate(address):
        y, xx = rows + dy, cols + dx
        inside = (y >= 0) & (y < h) & (xx >= 0) & (xx < wd)
        gathered[:, k][:, inside] = x[:, src][:, np.clip(y, 0, h - 1), np.clip(xx, 0, wd - 1)][:, inside]
    cout = w.shape[0]
    kg, mg = cin // group, cout // group
    w2 = np.asarray(w, np.float64).reshape(cout, kg)
    out = np.empty((n, cout, ho, wo))
    for g in range(group):
        out[:, g * mg:(g + 1) * mg] = np.einsum("mk,nkhw->nmhw", w2[g * mg:(g + 1) * mg],
                                                gathered[:, g * kg:(g + 1) * kg])
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None, None]
    if residual is not None:
        out += np.asarray(residual, np.float64)
    return np.clip(out, clip_min, clip_max)
