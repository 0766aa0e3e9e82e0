// CPU kernels of the normal-equation matrices of X -> F2 ⊛ X, the linear map A with
// A[(o, t), (m, s)] = F2[o, m, t - s] for X of spatial size k1 (C-contiguous buffers).
//
//   gram_outer:      M = A^T A, (c1|k1|) x (c1|k1|),
//                    M[(m, s), (m', s')] = Σ_{o,u} F2[o, m, u] F2[o, m', u + s - s']:
//                    one c1 x c1 product per lag δ = s - s', with R(-δ) = R(δ)^T.
//                    M = M^T bit for bit: R(0)'s lower triangle and R(-δ) are copies.
//   gram_outer_rows: N = A A^T, (c2|Kt|) x (c2|Kt|),
//                    N[(o, t), (o', t')] = Σ_{m,s} F2[o, m, t - s] F2[o', m, t' - s]:
//                    one c2 x c2 block per pair t <= t', with N_{t', t} = N_{t, t'}^T.
//                    N = N^T bit for bit: N_{t,t}'s lower triangle and N_{t',t} are copies.
#pragma once

#include <cstdint>

#include "shape.h"

namespace netmorph {

template <typename T>
void gram_outer_cpu(const T* f2, int64_t c2, int64_t c1, const Dims3& k2, const Dims3& k1, T* m);

template <typename T>
void gram_outer_rows_cpu(const T* f2, int64_t c2, int64_t c1, const Dims3& k2, const Dims3& k1,
                         T* n);

}  // namespace netmorph
