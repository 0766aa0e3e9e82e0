"""NumPy reference of the two-sided deconvolution: solve G~ = Post ⊛ X ⊛ Pre for X.

Post (C2, Cb, *Kpost), X (Cb, Ca, *k), Pre (Ca, C0, *Kpre) -> G~ (C2, C0, *Kt) with
Kt = Kpost + k + Kpre − 2. With Y = X ⊛ Pre of size Ky = k + Kpre − 1,
Y[m, i, u] = Σ_{n,s} B[(i, u), (n, s)]·X[m, n, s] with B the outer operator of Preᵀ
((X ⊛ Pre)ᵀ = Preᵀ ⊛ Xᵀ), and G~[o, i, t] = Σ_{m,u} A[(o, t), (m, u)]·Y[m, i, u] with A the
outer operator of Post. The whole map is the matrix
T[(o, i, t), (m, n, s)] = Σ_u A[(o, t), (m, u)]·B[(i, u), (n, s)]
of shape (C2·C0·|Kt|, Cb·Ca·|k|), built explicitly: memory grows with the product of all four
channel counts, so the reference is for small layers (``max_entries``).
"""

from __future__ import annotations

import math

import numpy as np

from .._memory import check_working_set
from .compose import swap_channels
from .deconv import outer_operator, solve_nearest

#: Largest operator the reference builds (float64 entries): 2**26 entries = 512 MiB.
MAX_OPERATOR_ENTRIES = 2**26


def two_sided_operator(
    post: np.ndarray,
    pre: np.ndarray,
    k: tuple[int, ...],
    max_entries: int = MAX_OPERATOR_ENTRIES,
) -> np.ndarray:
    """The matrix T of X ↦ Post ⊛ X ⊛ Pre for X (Cb, Ca, *k), rows and columns in C order.

    Raises ``ValueError`` when T would have more than ``max_entries`` entries.
    """
    c2, cb = post.shape[:2]
    ca, c0 = pre.shape[:2]
    k_pre = pre.shape[2:]
    ky = tuple(a + b - 1 for a, b in zip(k, k_pre))
    kt = tuple(a + b - 1 for a, b in zip(ky, post.shape[2:]))
    rows = c2 * c0 * math.prod(kt)
    cols = cb * ca * math.prod(k)
    if rows * cols > max_entries:
        raise ValueError(
            f"the two-sided operator would have {rows} x {cols} entries, more than "
            f"max_entries={max_entries}; use an iterative solver for layers this large"
        )
    check_working_set(
        8 * (2 * rows * cols + c2 * math.prod(kt) * cb * math.prod(ky)),
        f"the explicit two-sided operator ({rows} x {cols})",
    )
    a = outer_operator(post, ky).reshape(c2, math.prod(kt), cb, math.prod(ky))
    b = outer_operator(swap_channels(pre), k).reshape(c0, math.prod(ky), ca, math.prod(k))
    return np.einsum("otmu,iuns->oitmns", a, b, optimize=True).reshape(rows, cols)


def deconv_two_sided_ref(
    g_tilde: np.ndarray,
    post: np.ndarray,
    pre: np.ndarray,
    k: tuple[int, ...],
    init: np.ndarray | None = None,
) -> np.ndarray:
    """Least-squares X (Cb, Ca, *k) of G~ = Post ⊛ X ⊛ Pre, the one nearest ``init``.

    Minimum norm when ``init`` is None; G~ (C2, C0, *Kt) at the effective size. Returns float64.
    """
    x_shape = (post.shape[1], pre.shape[0], *k)
    t = two_sided_operator(post, pre, k)
    b = g_tilde.astype(np.float64).reshape(-1, 1)
    x0 = None if init is None else init.astype(np.float64).reshape(-1, 1)
    return solve_nearest(t, b, x0).reshape(x_shape)
