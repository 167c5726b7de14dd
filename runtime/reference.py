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


def conv2d_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, group: int = 1, strides=(1, 1),
               pads=(0, 0, 0, 0), dilations=(1, 1)) -> np.ndarray:
    """A dense 2-D convolution in float64 (ONNX Conv semantics, explicit pads [top, left, bottom, right])."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, cin, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    if cin != cg * group or cout % group:
        raise ValueError(f"W {w.shape} does not fit X {x.shape} with group {group}")
    (sh, sw), (dh, dw) = strides, dilations
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    mg = cout // group
    out = np.zeros((n, cout, ho, wo))
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[:, :, ky * dh: ky * dh + sh * (ho - 1) + 1: sh, kx * dw: kx * dw + sw * (wo - 1) + 1: sw]
            for g in range(group):
                out[:, g * mg:(g + 1) * mg] += np.einsum("mc,nchw->nmhw", w[g * mg:(g + 1) * mg, :, ky, kx],
                                                         patch[:, g * cg:(g + 1) * cg])
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None, None]
    return out


def perforated_conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, positions: np.ndarray,
                        fill: np.ndarray, group: int = 1, strides=(1, 1), pads=(0, 0, 0, 0),
                        dilations=(1, 1)) -> np.ndarray:
    """PerforatedConv in float64: the conv at the kept positions only (each one computed on its
    own, not taken from a dense result), then output position q = value at positions[fill[q]]."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, cin, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = strides, dilations
    ho = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    positions = np.asarray(positions, np.int64)
    fill = np.asarray(fill, np.int64)
    if fill.shape != (ho * wo,):
        raise ValueError(f"fill has {fill.size} entries, the output plane {ho}x{wo} = {ho * wo}")
    if positions.size == 0 or positions.min() < 0 or positions.max() >= ho * wo:
        raise ValueError("positions out of range")
    if fill.min() < 0 or fill.max() >= positions.size:
        raise ValueError("fill out of range")
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oy, ox = positions // wo, positions % wo
    ky, kx = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    rows = oy[:, None, None] * sh + ky[None] * dh  # [P, kh, kw] padded-input coordinates
    cols = ox[:, None, None] * sw + kx[None] * dw
    patches = xp[:, :, rows, cols]  # [N, Cin, P, kh, kw]
    mg = cout // group
    kept = np.empty((n, cout, positions.size))
    for g in range(group):
        kept[:, g * mg:(g + 1) * mg] = np.einsum("mcyx,ncpyx->nmp", w[g * mg:(g + 1) * mg],
                                                 patches[:, g * cg:(g + 1) * cg])
    if b is not None:
        kept += np.asarray(b, np.float64)[None, :, None]
    return kept[:, :, fill].reshape(n, cout, ho, wo)
