"""Factorization of one layer matrix M (rows = input side), optionally whitened.

Plain: M = U S V^T; the best rank-r fit (Eckart-Young, error ||M - M_r||_F^2 =
sum_{i>r} s_i^2) is the projection M V_r V_r^T = U_r U_r^T M. The singular vectors of
the smaller side come from the eigendecomposition of its Gram matrix (fast, exact at
full rank since the basis is orthonormal); P and Q are then balanced by sqrt(s_i) per
component, P = M V_r S_r^-1/2, Q = S_r^1/2 V_r^T (the textbook U_r sqrt(S_r), sqrt(S_r) V_r^T).

Activation-aware (SVD-LLM / ASVD style): with the input second moment C = E[x x^T]
(per input channel, shrunk toward its diagonal, (1 - a) C + a diag(C) (Ledoit and Wolf,
2004, with a fixed share a), and damped by `DAMPING` x mean(diag C)) and its symmetric square
root S, the output error of the layer is E||x^T (M - M')||^2 = ||S (M - M')||_F^2.
So factor Mw = S M = U Sig V^T; the fit is M V_r V_r^T (or S^-1 U_r U_r^T S M) and the
tail sum_{i>r} sig_i^2 is the expected squared output error. For conv forms
the rows are (channel, kernel position) and S = S_c (x) I_k (channel statistics only).

Large matrices whose useful ranks (`rank_cap`, the break-even rank) are far below full
rank use a randomized SVD (Halko et al., 2011, with power iterations) for the top
`rank_cap` values only; the total energy ||Mw||_F^2 is exact either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAMPING = 1e-3  # relative ridge on the input covariance before its square root
FULL_SVD_FLOPS = 3e9  # above m*n*min(m,n) the randomized SVD is used
OVERSAMPLE = 16
POWER_ITERS = 3
EIG_FLOOR = 1e-12  # relative floor of covariance eigenvalues
BALANCE_FLOOR = 1e-6  # relative floor of the singular values that balance P and Q


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


def whitener(cov: np.ndarray, repeat: int = 1, shrink: float = 0.0) -> Whitener:
    """Whitener of a (channels x channels) second-moment matrix, shrunk and damped.

    Shrinkage toward the diagonal, (1 - shrink) C + shrink diag(C), keeps each channel's
    scale but trusts the sample correlations less: few samples (calibration sets of a
    few hundred vectors against 1,536 channels) make them mostly noise.
    """
    cov = (cov + cov.T) / 2
    if shrink > 0:
        cov = (1.0 - shrink) * cov + shrink * np.diag(np.diag(cov))
    scale = float(np.mean(np.diag(cov))) or 1.0
    vals, vecs = np.linalg.eigh(cov + DAMPING * scale * np.eye(cov.shape[0]))
    vals = np.maximum(vals, EIG_FLOOR * scale)
    root = (vecs * np.sqrt(vals)) @ vecs.T
    inv_root = (vecs / np.sqrt(vals)) @ vecs.T
    return Whitener(root, inv_root, repeat)


@dataclass
class Factorization:
    """Top singular values of the (whitened) matrix and one side's singular vectors.

    `side` is "right" (basis = V, cols x k) or "left" (basis = U, rows x k): the
    decomposition is taken from the Gram matrix of the smaller side, so the best
    rank-r fit is a projection, M V_r V_r^T or S^-1 U_r U_r^T S M, exact at full rank.
    """

    matrix: np.ndarray
    vectors: np.ndarray | None  # None until first needed (computed from `gram`)
    s: np.ndarray
    side: str
    total: float
    method: str
    white: Whitener | None = None
    gram: np.ndarray | None = None

    @property
    def basis(self) -> np.ndarray:
        """Singular vectors of `side`, descending (eigh of the Gram matrix, on demand)."""
        if self.vectors is None:
            if self.gram is None:  # svd_factor always gives one of the two
                raise ValueError("Factorization has neither singular vectors nor a Gram matrix")
            vals, vecs = np.linalg.eigh(self.gram)
            self.vectors = vecs[:, np.argsort(vals)[::-1]]
            self.gram = None
        return self.vectors

    @property
    def energies(self) -> np.ndarray:
        """Squared singular values, descending (only the computed ones)."""
        return self.s**2

    def tail(self, rank: int) -> float:
        """Energy lost at `rank` (exact, also past the computed values)."""
        return max(self.total - float(np.sum(self.energies[:rank])), 0.0)

    def rank_for_energy(self, energy: float) -> int:
        """Smallest rank keeping `energy` of the total; len(s) + 1 when not computed."""
        if self.total <= 0:
            return 1
        kept = np.cumsum(self.energies) / self.total
        return int(np.searchsorted(kept, energy - 1e-12)) + 1

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """P (rows x rank) and Q (rank x cols), P Q the best rank-`rank` fit, balanced."""
        basis = self.basis[:, :rank]
        if self.side == "right":
            p, q = self.matrix @ basis, basis.T
        else:
            white = self.white
            p = white.apply(basis, inverse=True) if white is not None else basis
            q = basis.T @ (white.apply(self.matrix) if white is not None else self.matrix)
        s = self.s[:rank]
        scale = np.sqrt(np.maximum(s, BALANCE_FLOOR * (s[0] if s.size else 1.0)))
        return p / scale, scale[:, None] * q


def factorize(
    matrix: np.ndarray, white: Whitener | None = None, rank_cap: int | None = None, seed: int = 0
) -> Factorization:
    """Spectrum of `matrix` (whitened from the left when `white` is given)."""
    m = white.apply(matrix) if white is not None else matrix
    rows, cols = m.shape
    full = min(rows, cols)
    total = float(np.sum(m * m))
    cap = full if rank_cap is None else max(1, min(int(rank_cap), full))
    sketch_cost = 2 * (2 * POWER_ITERS + 1) * (cap + OVERSAMPLE)  # x rows * cols, vs Gram: x full
    if float(rows) * cols * full <= FULL_SVD_FLOPS or sketch_cost >= full:
        side = "right" if cols <= rows else "left"
        gram = m.T @ m if side == "right" else m @ m.T
        gram = (gram + gram.T) / 2
        s = np.sqrt(np.maximum(np.sort(np.linalg.eigvalsh(gram))[::-1], 0.0))
        return Factorization(matrix, None, s, side, total, "full", white, gram)
    s, vt = _randomized(m, cap, seed)
    return Factorization(matrix, vt.T, s, "right", total, f"randomized(k={cap})", white)


def _randomized(m: np.ndarray, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-`rank` singular values and right vectors by a randomized range finder."""
    rng = np.random.default_rng(seed)
    sketch = m @ rng.standard_normal((m.shape[1], rank + OVERSAMPLE))
    basis, _ = np.linalg.qr(sketch)
    for _ in range(POWER_ITERS):
        basis, _ = np.linalg.qr(m.T @ basis)
        basis, _ = np.linalg.qr(m @ basis)
    _, s, vt = np.linalg.svd(basis.T @ m, full_matrices=False)
    return s[:rank], vt[:rank]
