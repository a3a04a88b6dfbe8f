"""A float64 numpy implementation of the decode-attention policies, one sequence and one KV head at a time,
written from the definitions in docs/policies.md (independent of kinetics_jax): the tests' ground truth."""

from __future__ import annotations

import numpy as np


def _best(scores: list[float], k: int) -> list[int]:
    """Indices of the k highest scores; ties go to the lower index (as lax.top_k)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def keep(q: np.ndarray, k: np.ndarray, n: int, kind: str, sink: int = 4, local: int = 0, topk: int = 0,
         block_size: int = 16, block_topk: int = 0, score: str = "mean") -> np.ndarray:
    """q [Hq, D], k [T, Hkv, D] of one sequence with n cached tokens -> bool[Hkv, T] kept tokens."""
    t_max, hkv, _ = k.shape
    group = q.shape[0] // hkv
    out = np.zeros((hkv, t_max), bool)
    for h in range(hkv):
        qs = q[h * group:(h + 1) * group].astype(np.float64)
        kh = k[:, h].astype(np.float64)
        row = out[h]
        if kind == "dense":
            row[:n] = True
        elif kind == "sliding_window":
            row[:min(sink, n)] = True
            row[max(n - local, 0):n] = True
        elif kind == "topk":
            if n <= sink + topk + local:
                row[:n] = True
                continue
            row[:sink] = True
            row[n - local:n] = True
            middle = list(range(sink, n - local))
            scores = [float(np.mean(qs @ kh[t])) for t in middle]
            row[[middle[i] for i in _best(scores, topk)]] = True
        elif kind == "block_topk":
            n_full = max(n - local - sink, 0) // block_size
            row[:min(sink, n)] = True
            row[sink + n_full * block_size:n] = True  # the local window and the trailing partial block
            scores = []
            for j in range(n_full):
                block = kh[sink + j * block_size:sink + (j + 1) * block_size]
                if score == "mean":
                    scores.append(float(np.mean(qs @ block.mean(0))))
                else:
                    lo, hi = block.min(0), block.max(0)
                    scores.append(float(np.mean(np.maximum(qs * lo, qs * hi).sum(-1))))
            for j in _best(scores, block_topk):
                row[sink + j * block_size:sink + (j + 1) * block_size] = True
        else:
            raise ValueError(kind)
    return out


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """float64 softmax attention of q [Hq, D] over the kept tokens bool[Hkv, T] of k, v [T, Hkv, D]."""
    hkv, d = k.shape[1], q.shape[1]
    group = q.shape[0] // hkv
    out = np.zeros(q.shape)
    for head in range(q.shape[0]):
        h = head // group
        idx = np.flatnonzero(kept[h])
        s = k[idx, h].astype(np.float64) @ q[head].astype(np.float64) / np.sqrt(d)
        p = np.exp(s - s.max())
        out[head] = (p / p.sum()) @ v[idx, h].astype(np.float64)
    return out
