"""Factorization of one layer matrix M (rows = input side), optionally whitened.

Plain: M = U S V^T; P = U_r sqrt(S_r), Q = sqrt(S_r) V_r^T (Eckart-Young, error
||M - P Q||_F^2 = sum_{i>r} s_i^2).

Activation-aware (SVD-LLM / ASVD style): with the input second moment C = E[x x^T]
(per input channel, damped by `DAMPING` x mean(diag C)) and its symmetric square
root S, the output error of the layer is E||x^T (M - M')||^2 = ||S (M - M')||_F^2.
So factor Mw = S M = U Sig V^T and set P = S^-1 U_r sqrt(Sig_r), Q = sqrt(Sig_r) V_r^T;
the tail sum_{i>r} sig_i^2 is then the expected squared output error. For conv forms
the rows are (channel, kernel position) and S = S_c (x) I_k (channel statistics only).

Large matrices use a randomized SVD (Halko et al., 2011, with power iterations) for the
top `rank_cap` values only; the total energy ||Mw||_F^2 is exact either way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAMPING = 1e-3  # relative ridge on the input covariance before its square root
FULL_SVD_FLOPS = 3e9  # above m*n*min(m,n) the randomized SVD is used
OVERSAMPLE = 16
POWER_ITERS = 3
EIG_FLOOR = 1e-12  # relative floor of covariance eigenvalues


@dataclass
class Whitener:
    """Symmetric square root of a channel covariance and its inverse, tiled `repeat` times."""

    root: np.ndarray
    inv_root: np.ndarray
    repeat: int

    def apply(self, matrix: np.ndarray, inverse: bool = False) -> np.ndarray:
        """(S (x) I_repeat) @ matrix, or with S^-1 when `inverse`."""
        s = self.inv_root if inverse else self.root
        rows, cols = matrix.shape
        blocks = matrix.reshape(s.shape[0], self.repeat, cols)
        return np.einsum("ij,jkc->ikc", s, blocks).reshape(rows, cols)


def whitener(cov: np.ndarray, repeat: int = 1) -> Whitener:
    """Whitener of a (channels x channels) second-moment matrix, damped."""
    cov = (cov + cov.T) / 2
    scale = float(np.mean(np.diag(cov))) or 1.0
    vals, vecs = np.linalg.eigh(cov + DAMPING * scale * np.eye(cov.shape[0]))
    vals = np.maximum(vals, EIG_FLOOR * scale)
    root = (vecs * np.sqrt(vals)) @ vecs.T
    inv_root = (vecs / np.sqrt(vals)) @ vecs.T
    return Whitener(root, inv_root, repeat)


@dataclass
class Factorization:
    """Top singular triplets of the (whitened) matrix and what they were computed with."""

    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    total: float
    method: str
    white: Whitener | None = None

    @property
    def energies(self) -> np.ndarray:
        """Squared singular values, descending (only the computed ones)."""
        return self.s ** 2

    def tail(self, rank: int) -> float:
        """Energy lost at `rank` (exact, also past the computed values)."""
        return max(self.total - float(np.sum(self.energies[:rank])), 0.0)

    def rank_for_energy(self, energy: float) -> int:
        """Smallest rank keeping `energy` of the total (capped at the computed rank)."""
        if self.total <= 0:
            return 1
        kept = np.cumsum(self.energies) / self.total
        hit = int(np.searchsorted(kept, energy - 1e-12)) + 1
        return min(hit, len(self.s))

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """P (rows x rank) and Q (rank x cols) with P Q the best rank-`rank` fit."""
        root = np.sqrt(self.s[:rank])
        p = self.u[:, :rank] * root
        q = root[:, None] * self.vt[:rank]
        if self.white is not None:
            p = self.white.apply(p, inverse=True)
        return p, q


def factorize(matrix: np.ndarray, white: Whitener | None = None, rank_cap: int | None = None,
              seed: int = 0) -> Factorization:
    """SVD of `matrix` (whitened from the left when `white` is given)."""
    m = white.apply(matrix) if white is not None else matrix
    rows, cols = m.shape
    full = min(rows, cols)
    total = float(np.sum(m * m))
    cap = full if rank_cap is None else max(1, min(int(rank_cap), full))
    if float(rows) * cols * full <= FULL_SVD_FLOPS or cap + OVERSAMPLE >= full:
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        return Factorization(u, s, vt, total, "full", white)
    u, s, vt = _randomized(m, cap, seed)
    return Factorization(u, s, vt, total, f"randomized(k={cap})", white)


def _randomized(m: np.ndarray, rank: int, seed: int) -> tuple[np.ndarray, ...]:
    """Top-`rank` SVD by a randomized range finder with power iterations."""
    rng = np.random.default_rng(seed)
    sketch = m @ rng.standard_normal((m.shape[1], rank + OVERSAMPLE))
    basis, _ = np.linalg.qr(sketch)
    for _ in range(POWER_ITERS):
        basis, _ = np.linalg.qr(m.T @ basis)
        basis, _ = np.linalg.qr(m @ basis)
    small_u, s, vt = np.linalg.svd(basis.T @ m, full_matrices=False)
    return (basis @ small_u)[:, :rank], s[:rank], vt[:rank]
