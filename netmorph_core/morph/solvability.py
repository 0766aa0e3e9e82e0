"""When a depth morph G~ = F2 ⊛ F1 has an exact solution, by counting equations and unknowns.

G (C2, C0, *K) is morphed into F1 (C1, C0, *K1) and F2 (C2, C1, *K2); G~ is G zero-padded
centred to Kt = K1 + K2 − 1. With F2 fixed, G~ = F2 ⊛ F1 is one linear system per input channel
with C2·|Kt| equations and C1·|K1| unknowns, so solving F1 last is exact for a generic F2 when
C1·|K1| ≥ C2·|Kt|; solving F2 last is exact for a generic F1 when C1·|K2| ≥ C0·|Kt|
(|K| is the number of taps, 1 for a linear layer).

These counts are necessary (for the solve to be exact for every G) and sufficient for almost
every shape, but not all: the fixed factor's own syzygies can lower the rank. With C2 = 1 the
operator is X ↦ Σ_m F2[0, m] ⊛ X[m], and F2[0, j] ⊛ F2[0, i] − F2[0, i] ⊛ F2[0, j] = 0 puts
C1(C1 − 1)/2 · |K1 − K2 + 1| vectors in its kernel when K1 ≥ K2; e.g. C2 = C0 = 1, C1 = 3,
3×3 kernels: 27 unknowns, 25 equations, rank 24. The algorithms therefore always check the
residual: Algorithm 1 keeps alternating, Algorithm 2 moves on to the next reduced kernel.

The paper's condition (7), min(C1·C0·|K1|, C2·C1·|K2|) ≥ C2·C0·|Kt|, is both of these at once:
sufficient, not necessary. Algorithm 2 ("practical") shrinks the kernel of the factor that is
not solved: with F1 solved and F2 shrunk to K2r the system is C1·|K1| ≥ C2·|K1 + K2r − 1|, and
the smallest admissible K2r (K1 + K2r − 1 ≥ K) gives the exact condition
C1·|K1| ≥ C2·Π max(K1, K) (symmetrically C1·|K2| ≥ C0·Π max(K2, K)). The paper's claim that
Algorithm 2 is exact whenever F1 (or F2) has at least as many parameters as G is not
sufficient: C1 < C2 with K1 > K can have C1·C0·|K1| ≥ C2·C0·|K| while every reduced system
stays overdetermined.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import _validation as v

#: Which factor Algorithm 2 solves: "F1" (F2's kernel is shrunk) or "F2" (F1's kernel is shrunk).
SOLVED_SIDES = ("F1", "F2")


def taps(kernel: Sequence[int]) -> int:
    """Number of taps |K| of a kernel (1 for a linear layer's empty kernel)."""
    return math.prod(kernel)


@dataclass(frozen=True)
class Reduction:
    """One candidate of Algorithm 2: solve ``solved`` with the other factor's kernel ``size``.

    ``small_kt`` is the effective size of the reduced system, ``count_ok`` whether it has at least
    as many unknowns as equations (exact for a generic random factor), ``nonzeros`` how many
    entries of F1 and F2 can then be non-zero.
    """

    solved: str
    size: tuple[int, ...]
    small_kt: tuple[int, ...]
    count_ok: bool
    nonzeros: int


def practical_reductions(
    c0: int, c1: int, c2: int, kernel: tuple[int, ...], k1: tuple[int, ...], k2: tuple[int, ...]
) -> list[Reduction]:
    """Every candidate of Algorithm 2, most non-zeros first (ties: F1 solved, squarer kernel).

    F1 solved: F2 shrunk to K2r with 1 ≤ K2r ≤ K2 and K1 + K2r − 1 ≥ K per dimension;
    F2 solved: F1 shrunk to K1r likewise.
    """
    found = []
    for solved in SOLVED_SIDES:
        full, reduced = (k1, k2) if solved == "F1" else (k2, k1)
        c_solved_rows = c2 if solved == "F1" else c0
        ranges = [range(max(1, k - f + 1), r + 1) for k, f, r in zip(kernel, full, reduced)]
        for size in itertools.product(*ranges):
            small_kt = tuple(f + s - 1 for f, s in zip(full, size))
            count_ok = c1 * taps(full) >= c_solved_rows * taps(small_kt)
            if solved == "F1":
                nonzeros = c1 * c0 * taps(k1) + c2 * c1 * taps(size)
            else:
                nonzeros = c2 * c1 * taps(k2) + c1 * c0 * taps(size)
            found.append(Reduction(solved, tuple(size), small_kt, count_ok, nonzeros))
    found.sort(
        key=lambda r: (
            -r.nonzeros,
            SOLVED_SIDES.index(r.solved),
            -min(r.size, default=1),
            tuple(-s for s in r.size),
        )
    )
    return found


def identity_tap(
    kernel: tuple[int, ...], k1: tuple[int, ...], k2: tuple[int, ...]
) -> tuple[int, ...] | None:
    """The tap a of K1 for the identity in F1, or None where none exists: per dimension
    K1 ≤ K2 and, with s = (Kt − K) / 2 the offset of G in G~, a ≤ s and s + K ≤ a + K2 (G
    within a + K2); the admissible a nearest K1's centre."""
    taps = []
    for k, n1, n2 in zip(kernel, k1, k2):
        s = (n1 + n2 - 1 - k) // 2
        low, high = max(0, s + k - n2), min(s, n1 - 1)
        if n1 > n2 or low > high:
            return None
        taps.append(min(max((n1 - 1) // 2, low), high))
    return tuple(taps)


def augmented_side(
    c0: int, c1: int, c2: int, kernel: tuple[int, ...], k1: tuple[int, ...], k2: tuple[int, ...]
) -> str | None:
    """Where the identity-augmented pair (:mod:`netmorph_core.morph.augmented`, exact and dense
    in closed form) puts its identity: "F1" (needs K1 ≤ K2, w > C0 and :func:`identity_tap`), "F2"
    (K2 ≤ K1 and w > C2; the mirror image), or None. When both apply, the side leaving more
    random channels (w − C0 against w − C2); ties go to F1."""
    sides = []
    if c1 > c0 and identity_tap(kernel, k1, k2) is not None:
        sides.append((c1 - c0, 1, "F1"))
    if c1 > c2 and identity_tap(kernel, k2, k1) is not None:
        sides.append((c1 - c2, 0, "F2"))
    return max(sides)[2] if sides else None


@dataclass(frozen=True)
class Solvability:
    """Exactness conditions of morphing G (C2, C0, *K) into F1 (C1, C0, *K1), F2 (C2, C1, *K2).

    Every flag is an equation count for generic (random) factors; see the module docstring
    for when a count that holds still leaves the solve inexact.
    ``f1_last_exact``: C1·|K1| ≥ C2·|Kt| (Algorithm 1 is exact in one solve of F1).
    ``f2_last_exact``: C1·|K2| ≥ C0·|Kt|.
    ``paper_condition_7``: min(C1C0|K1|, C2C1|K2|) ≥ C2C0|Kt| (both of the above).
    ``paper_expanding_claim``: max(C1C0|K1|, C2C1|K2|) ≥ C2C0|K| (the paper's stated condition
    for Algorithm 2; not sufficient).
    ``practical_f1_expands``: K1 ≥ K per dimension and C1 ≥ C2 (Algorithm 2 is exact at the
    latest when F2 is shrunk to 1 tap). ``practical_f2_expands``: K2 ≥ K and C1 ≥ C0.
    ``practical_f1_side``: C1·|K1| ≥ C2·Π max(K1, K), the precise condition for Algorithm 2
    with F1 solved (implied by ``practical_f1_expands`` and by ``f1_last_exact``);
    ``practical_f2_side`` symmetric.
    ``exact_general``: either per-side condition; ``exact_practical``: either practical side.
    ``dense_count``: the pair's parameters less the w² of the channel gauge
    (F1, F2) → (T⁻¹F1, F2·T), C1·(C0|K1| + C2|K2|) − C1², against the C2·C0·|Kt| equations of
    a generic G~; ``dense_count_ok``: it is large enough, or a per-side condition holds, or
    C1 exceeds min(C0|K1|, C2|K2|) (the gauge no longer acts freely; the count says nothing)
    — that much is ``generic_count_ok`` — or ``augmented_side`` is set.
    ``augmented_side``: "F1"/"F2" where the identity-augmented pair exists (exact and dense
    in closed form for C1 > C0 with K1 ≤ K2, or C1 > C2 with K2 ≤ K1, G fitting the larger
    kernel; see :func:`augmented_side`), else None: G~ is G zero-padded, not a generic G~,
    so the count is not necessary there. When
    ``dense_count_ok`` fails, a dense exact decomposition is not expected (the bilinear map's
    image is too small), and the general and stable methods refuse before any work.
    """

    c0: int
    c1: int
    c2: int
    kernel: tuple[int, ...]
    k1: tuple[int, ...]
    k2: tuple[int, ...]
    kt: tuple[int, ...] = field(init=False)
    params_f1: int = field(init=False)
    params_f2: int = field(init=False)
    params_g: int = field(init=False)
    params_g_tilde: int = field(init=False)
    f1_last_exact: bool = field(init=False)
    f2_last_exact: bool = field(init=False)
    paper_condition_7: bool = field(init=False)
    paper_expanding_claim: bool = field(init=False)
    practical_f1_expands: bool = field(init=False)
    practical_f2_expands: bool = field(init=False)
    practical_f1_side: bool = field(init=False)
    practical_f2_side: bool = field(init=False)
    exact_general: bool = field(init=False)
    exact_practical: bool = field(init=False)
    dense_count: int = field(init=False)
    generic_count_ok: bool = field(init=False)
    dense_count_ok: bool = field(init=False)
    augmented_side: str | None = field(init=False)

    def __post_init__(self) -> None:
        c0, c1, c2, kernel, k1, k2 = self.c0, self.c1, self.c2, self.kernel, self.k1, self.k2
        kt = tuple(a + b - 1 for a, b in zip(k1, k2))
        values = {
            "kt": kt,
            "params_f1": c1 * c0 * taps(k1),
            "params_f2": c2 * c1 * taps(k2),
            "params_g": c2 * c0 * taps(kernel),
            "params_g_tilde": c2 * c0 * taps(kt),
            "f1_last_exact": c1 * taps(k1) >= c2 * taps(kt),
            "f2_last_exact": c1 * taps(k2) >= c0 * taps(kt),
            "practical_f1_expands": all(a >= k for a, k in zip(k1, kernel)) and c1 >= c2,
            "practical_f2_expands": all(b >= k for b, k in zip(k2, kernel)) and c1 >= c0,
            "practical_f1_side": c1 * taps(k1)
            >= c2 * taps([max(a, k) for a, k in zip(k1, kernel)]),
            "practical_f2_side": c1 * taps(k2)
            >= c0 * taps([max(b, k) for b, k in zip(k2, kernel)]),
        }
        values["paper_condition_7"] = (
            min(values["params_f1"], values["params_f2"]) >= values["params_g_tilde"]
        )
        values["paper_expanding_claim"] = (
            max(values["params_f1"], values["params_f2"]) >= values["params_g"]
        )
        values["exact_general"] = values["f1_last_exact"] or values["f2_last_exact"]
        values["exact_practical"] = values["practical_f1_side"] or values["practical_f2_side"]
        reach1, reach2 = c0 * taps(k1), c2 * taps(k2)
        values["dense_count"] = c1 * (reach1 + reach2) - c1 * c1
        values["augmented_side"] = augmented_side(c0, c1, c2, kernel, k1, k2)
        values["generic_count_ok"] = (
            values["exact_general"]
            or c1 > min(reach1, reach2)
            or values["dense_count"] >= values["params_g_tilde"]
        )
        values["dense_count_ok"] = (
            values["generic_count_ok"] or values["augmented_side"] is not None
        )
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def explain(self) -> str:
        """A readable account of every condition with its numbers."""
        c0, c1, c2 = self.c0, self.c1, self.c2
        k1, k2, kt, kernel = self.k1, self.k2, self.kt, self.kernel
        yes = {True: "yes", False: "no"}
        max1 = taps([max(a, k) for a, k in zip(k1, kernel)])
        max2 = taps([max(b, k) for b, k in zip(k2, kernel)])
        lines = [
            f"G (C2={c2}, C0={c0}, K={kernel}) into F1 (C1={c1}, C0={c0}, K1={k1}) and "
            f"F2 (C2={c2}, C1={c1}, K2={k2}); G~ has size Kt={kt}",
            f"  parameters: F1 {self.params_f1}, F2 {self.params_f2}, "
            f"G~ {self.params_g_tilde}, G {self.params_g}",
            f"  solve F1 last (general): C1·|K1| = {c1 * taps(k1)} >= C2·|Kt| = "
            f"{c2 * taps(kt)}: {yes[self.f1_last_exact]}",
            f"  solve F2 last (general): C1·|K2| = {c1 * taps(k2)} >= C0·|Kt| = "
            f"{c0 * taps(kt)}: {yes[self.f2_last_exact]}",
            f"  paper condition (7) (sufficient, both sides at once): "
            f"{yes[self.paper_condition_7]}",
            f"  practical, F1 solved, F2 shrunk: C1·|K1| = {c1 * taps(k1)} >= "
            f"C2·|max(K1, K)| = {c2 * max1}: {yes[self.practical_f1_side]}"
            f" (F1 expands G, K1 >= K and C1 >= C2: {yes[self.practical_f1_expands]})",
            f"  practical, F2 solved, F1 shrunk: C1·|K2| = {c1 * taps(k2)} >= "
            f"C0·|max(K2, K)| = {c0 * max2}: {yes[self.practical_f2_side]}"
            f" (F2 expands G, K2 >= K and C1 >= C0: {yes[self.practical_f2_expands]})",
            f"  paper's claim for Algorithm 2 (a factor has >= parameters than G; not "
            f"sufficient): {yes[self.paper_expanding_claim]}",
            f"  dense count (parameters less the C1² channel gauge): C1·(C0|K1| + C2|K2|) − C1² "
            f"= {self.dense_count} >= C2·C0·|Kt| = {self.params_g_tilde}: "
            f"{yes[self.dense_count_ok and self.dense_count >= self.params_g_tilde]}"
            f" (dense exact solution expected: {yes[self.dense_count_ok]})",
            f"  identity-augmented pair (closed form, dense; identity in F1 needs K1 <= K2 and "
            f"C1 > C0, in F2 K2 <= K1 and C1 > C2): "
            f"{'yes, identity in ' + self.augmented_side if self.augmented_side else 'no'}",
            f"  => general (Algorithm 1): exact in one solve: {yes[self.exact_general]}; "
            f"practical (Algorithm 2): exact: {yes[self.exact_practical]}",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()


def check_dense_count(info: Solvability, method: str, *, generic: bool = False) -> None:
    """``ValueError`` with the counting argument when no dense exact decomposition is expected
    (``info.dense_count_ok`` false, or with ``generic`` ``info.generic_count_ok`` false: the
    stable method once the identity-augmented pair could not be lifted above its floor):
    raised before any work (or any search) unless approximate results are allowed."""
    if not (info.generic_count_ok if generic else info.dense_count_ok):
        augmented = (
            "; the identity-augmented pair exists but its entries could not be lifted above "
            "the floor (its branch of C1 − C0 channels is too narrow)"
            if generic and info.augmented_side
            else ""
        )
        raise ValueError(
            f"no exact dense {method} depth morph exists for a generic G: the pair has "
            f"{info.params_f1 + info.params_f2} parameters, less {info.c1}² = {info.c1**2} for "
            f"the channel gauge (F1, F2) -> (T⁻¹F1, F2·T), i.e. {info.dense_count} < "
            f"{info.params_g_tilde} equations C2·C0·|Kt|{augmented}; widen the layer, use "
            f"method='practical' (zero-padded), or allow_approximate=True\n{info.explain()}"
        )


def _shape(g_shape: object) -> tuple[int, ...]:
    items = v.int_sequence(g_shape)
    if items is None:
        raise TypeError(f"g_shape must be a tuple of ints (C2, C0, *K), got {g_shape!r}")
    dims = tuple(v.positive_int(d, "g_shape entries") for d in items)
    if not 2 <= len(dims) <= 2 + v.MAX_SPATIAL_DIMS:
        raise ValueError(
            f"g_shape must have 2 to {2 + v.MAX_SPATIAL_DIMS} entries (C2, C0, *K), got {dims}"
        )
    return dims


def layer_kernel(k: object, ndim: int, name: str) -> tuple[int, ...]:
    """A layer's kernel size as a tuple of ``ndim`` ints.

    A linear layer (ndim 0) has no kernel: ``k`` must be None, () or 1. A convolution needs an
    int or one int per spatial dimension.
    """
    if ndim == 0:
        if k is None or (isinstance(k, (tuple, list)) and len(k) == 0):
            return ()
        if v.positive_int(k, name) == 1:
            return ()
        raise ValueError(f"{name} must be None, () or 1 for a linear layer, got {k!r}")
    if k is None:
        raise TypeError(f"{name} is required for a convolution with {ndim} spatial dimensions")
    return v.kernel_tuple(k, ndim, name)


def solvability(
    g_shape: Sequence[int], width: int, k1: object = None, k2: object = None
) -> Solvability:
    """The exactness conditions of morphing a G of shape ``g_shape`` = (C2, C0, *K).

    F1 (width, C0, *k1) and F2 (C2, width, *k2); k1/k2 an int or one int per spatial dimension
    (None, () or 1 for a linear G). K1 + K2 − 1 − K must be even and ≥ 0 per dimension.
    """
    dims = _shape(g_shape)
    c1 = v.positive_int(width, "width")
    ndim = len(dims) - 2
    kernel1 = layer_kernel(k1, ndim, "k1")
    kernel2 = layer_kernel(k2, ndim, "k2")
    v.effective_size(dims[2:], kernel2, kernel1, "k1, k2")
    return Solvability(dims[1], c1, dims[0], dims[2:], kernel1, kernel2)
