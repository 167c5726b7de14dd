"""Perforation masks and their realisation in the graph (the perforate pass's building blocks).

A mask for an output plane of H x W positions is a sorted int32 array ``positions`` (flattened
indices of the computed positions) and an int32 array ``fill`` of H*W entries: the index into
``positions`` of the value each position takes (itself where computed, else its nearest computed
neighbour, Euclidean on the grid, ties broken by a fixed seed). The rate r is the kept fraction.

Strategies (Figurnov et al. 2016, "PerforatedCNNs"):

* ``uniform``: N = round(r*H*W) positions drawn uniformly at random (seeded), i.e. the top N of
  a random score.
* ``grid``: a pseudo-random grid of n points per axis, n = floor(sqrt(r)*H) rows and
  floor(sqrt(r)*W) columns (= floor(sqrt(r*H*W)) per axis on a square plane), placed with the
  pseudo-random integer sequence of fractional max-pooling, a_i = floor(alpha*(i + u)), alpha =
  H/n, u ~ U(0, 1) seeded. Where alpha is an integer the grid is a regular lattice (every
  alpha-th row from a seeded offset), which a strided Conv computes exactly. The fill is
  separable: every row takes its nearest kept row, every column its nearest kept column, which
  is a Euclidean-nearest kept position because d^2 = dy^2 + dx^2 splits by axis.
* ``pooling``: score = number of windows of the pooling layer that follows the conv containing
  the position; top N, ties broken at random (seeded). With non-overlapping windows every score
  is 1 and this is ``uniform``.
* ``impact``: score = estimated loss increase when the position is not computed (see
  perforate.py for what is measured); top N.
"""
from __future__ import annotations

import math

import numpy as np

STRATEGIES = ("grid", "uniform", "pooling", "impact")


def kept_count(h: int, w: int, rate: float) -> int:
    return int(min(h * w, max(1, round(rate * h * w))))


def _tiebreak(count: int, seed: int) -> np.ndarray:
    """A seeded priority in [0, 0.5) per item: added to integer (squared) distances it breaks ties only."""
    return np.random.default_rng(seed).random(count) * 0.5


def nearest_fill(h: int, w: int, positions: np.ndarray, seed: int = 0) -> np.ndarray:
    """For every position of the h x w plane, the index into ``positions`` of its nearest kept one
    (Euclidean; among equally near ones, the one with the lowest seeded priority)."""
    positions = np.asarray(positions, np.int64)
    ky, kx = positions // w, positions % w
    prio = _tiebreak(len(positions), seed)
    ys, xs = np.divmod(np.arange(h * w), w)
    fill = np.empty(h * w, np.int32)
    chunk = max(1, (1 << 22) // max(1, len(positions)))
    for s in range(0, h * w, chunk):
        d2 = (ys[s:s + chunk, None] - ky[None]) ** 2 + (xs[s:s + chunk, None] - kx[None]) ** 2 + prio[None]
        fill[s:s + chunk] = np.argmin(d2, axis=1)
    fill[positions] = np.arange(len(positions), dtype=np.int32)  # a kept position takes itself
    return fill


def _nearest_1d(n: int, kept: np.ndarray, seed: int) -> np.ndarray:
    prio = _tiebreak(len(kept), seed)
    d = np.abs(np.arange(n)[:, None] - kept[None]) + prio[None]
    return np.argmin(d, axis=1)


def grid_axes(h: int, w: int, rate: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The kept rows and columns of the pseudo-random grid."""
    root = math.sqrt(rate)
    ny = min(h, max(1, int(math.floor(root * h + 1e-9))))
    nx = min(w, max(1, int(math.floor(root * w + 1e-9))))
    rng = np.random.default_rng(seed)

    def axis(size: int, n: int) -> np.ndarray:
        alpha = size / n
        u = rng.random()
        return np.floor(alpha * (np.arange(n) + u)).astype(np.int64).clip(0, size - 1)

    return axis(h, ny), axis(w, nx)


def grid_mask(h: int, w: int, rate: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = grid_axes(h, w, rate, seed)
    positions = (rows[:, None] * w + cols[None]).reshape(-1).astype(np.int32)
    ri = _nearest_1d(h, rows, seed + 1)
    ci = _nearest_1d(w, cols, seed + 2)
    fill = (ri[:, None] * len(cols) + ci[None]).reshape(-1).astype(np.int32)
    return positions, fill


def lattice(axis: np.ndarray) -> tuple[int, int] | None:
    """(first, step) when the kept rows (or columns) are every step-th from first, else None."""
    if len(axis) == 1:
        return int(axis[0]), 1
    steps = np.diff(axis)
    return (int(axis[0]), int(steps[0])) if np.all(steps == steps[0]) else None


def top_mask(h: int, w: int, rate: float, score: np.ndarray | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The N = round(r*H*W) positions of highest score (uniform random with ``score=None``);
    ties broken by a seeded random order."""
    n = kept_count(h, w, rate)
    rnd = np.random.default_rng(seed).random(h * w)
    order = np.argsort(rnd, kind="stable") if score is None else np.lexsort((rnd, -np.asarray(score, np.float64).ravel()))
    positions = np.sort(order[:n]).astype(np.int32)
    return positions, nearest_fill(h, w, positions, seed)


def pooling_score(h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int],
                  pads: tuple[int, int, int, int], dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """How many windows of a pooling layer over an h x w input contain each position."""
    score = np.zeros((h, w))
    ph = (h + pads[0] + pads[2] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    pw = (w + pads[1] + pads[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    for i in range(ph):
        for j in range(pw):
            for ky in range(kernel[0]):
                y = i * stride[0] - pads[0] + ky * dilation[0]
                if not 0 <= y < h:
                    continue
                for kx in range(kernel[1]):
                    x = j * stride[1] - pads[1] + kx * dilation[1]
                    if 0 <= x < w:
                        score[y, x] += 1
    return score


def make_mask(strategy: str, h: int, w: int, rate: float, seed: int = 0,
              score: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(positions, fill) of ``strategy`` at ``rate``; ``score`` is the pooling or impact score."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    if rate >= 1.0:
        positions = np.arange(h * w, dtype=np.int32)
        return positions, positions.copy()
    if strategy == "grid":
        return grid_mask(h, w, rate, seed)
    if strategy == "uniform":
        return top_mask(h, w, rate, None, seed)
    if score is None:
        raise ValueError(f"strategy {strategy!r} needs a score")
    return top_mask(h, w, rate, score, seed)
