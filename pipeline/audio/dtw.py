"""Dynamic time warping (pure NumPy) to align two utterances of one sentence said in different emotions.

EVP pairs same-sentence clips of two emotions frame by frame after aligning them with DTW (its
`MFCC_dtw.py`: L1 distance between MFCC frames, every emotion warped onto one reference take).
Here the frames are video frames: each is described by its own 40 ms of MFCC (the central 4 rows
of its EVP window) with the clip's cepstral mean removed, so a global timbre shift between the two
takes (pitch, loudness, voice quality of the emotion) does not pull the alignment.
"""

from __future__ import annotations

import numpy as np

# Rows of an EVP [28, 12] window that hold the frame's own audio: the window of video frame k spans
# frames k-3..k+3 (4 MFCC rows each), so rows 12..15 belong to frame k.
OWN_ROWS = slice(12, 16)


def dtw(cost: np.ndarray) -> tuple[float, np.ndarray]:
    """Minimal-cost monotone path through a local cost matrix.

    D[0,0] = c[0,0];  D[i,j] = c[i,j] + min(D[i-1,j-1], D[i-1,j], D[i,j-1]);  total = D[N-1,M-1].
    The path runs from (0,0) to (N-1,M-1) with steps (1,1), (1,0), (0,1); backtracking prefers the
    diagonal, then (i-1, j), then (i, j-1) on ties. Returns (total, path (K, 2) int64).

    Rows are filled without a Python loop over columns: with t[j] = c[i,j] + min(D[i-1,j-1], D[i-1,j])
    and S = cumsum(c[i]), unrolling the horizontal step gives D[i,j] = S[j] + min_{k<=j}(t[k] - S[k]),
    a running minimum.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or 0 in cost.shape:
        raise ValueError(f"dtw needs a non-empty 2-D cost matrix, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("dtw cost matrix has non-finite entries")
    n, m = cost.shape
    acc = np.empty((n, m))
    acc[0] = np.cumsum(cost[0])
    for i in range(1, n):
        prev = acc[i - 1]
        vertical_or_diagonal = np.minimum(prev, np.concatenate([[np.inf], prev[:-1]]))
        entered = cost[i] + vertical_or_diagonal
        s = np.cumsum(cost[i])
        acc[i] = s + np.minimum.accumulate(entered - s)
    return float(acc[-1, -1]), _backtrack(acc)


def _backtrack(acc: np.ndarray) -> np.ndarray:
    i, j = acc.shape[0] - 1, acc.shape[1] - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            steps = ((i - 1, j - 1), (i - 1, j), (i, j - 1))
            i, j = min(steps, key=lambda ij: acc[ij])  # min keeps the first of equals: diagonal wins ties
        path.append((i, j))
    return np.array(path[::-1], dtype=np.int64)


def l1_cost(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) matrix of L1 distances between the rows of a (N, D) and b (M, D)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return np.abs(a[:, None, :] - b[None, :, :]).sum(axis=-1)


def frame_features(windows: np.ndarray) -> np.ndarray:
    """Per video frame DTW features from EVP windows (T, 28, 12): own 4 MFCC rows, clip mean removed."""
    own = np.asarray(windows, np.float64)[:, OWN_ROWS].reshape(len(windows), -1)
    return own - own.mean(axis=0, keepdims=True)


def warp_index(path: np.ndarray, length: int) -> np.ndarray:
    """For each frame i < length of the first sequence, the frame of the second one it is matched to.

    A frame matched to several frames (the other take is slower there) takes the middle one of them
    (the later of two). Every frame of both sequences is on a DTW path, so none is left unmatched.
    """
    path = np.asarray(path)
    out = np.empty(length, dtype=np.int64)
    for i in range(length):
        matched = path[path[:, 0] == i, 1]
        if matched.size == 0:
            raise ValueError(f"frame {i} is not on the path (path does not cover {length} frames)")
        out[i] = matched[len(matched) // 2]
    return out


def align_clips(windows_a: np.ndarray, windows_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """DTW-align two clips given as EVP windows: (b frame for each a frame, a frame for each b frame,
    mean local cost along the path)."""
    total, path = dtw(l1_cost(frame_features(windows_a), frame_features(windows_b)))
    a_to_b = warp_index(path, len(windows_a))
    b_to_a = warp_index(path[:, ::-1], len(windows_b))
    return a_to_b, b_to_a, total / len(path)
