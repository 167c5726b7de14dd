// Packed single-precision GEMM micro-kernels with runtime ISA dispatch.
//
// The custom kernels compute C[m, n] = bias[m] + sum_k A[m, k] * B[k, n] with C row-major
// (NCHW output: n runs over output positions).  Both operands arrive packed:
//   A: blocks of `mr` rows, each stored k-major ([K][mr], mr <= Isa::mr);
//   B: panels of `Isa::nr` columns, each stored k-major ([K][nr]), zero-padded to nr.
// A tile computes mr x nc (nc <= nr) outputs and writes them with masked stores, so no
// padding of C is needed and row/column tails cost no wasted FMAs beyond one vector.
#pragma once

#include <cstddef>

namespace onnxopt {

// Computes one mr x nc tile: c[r * ldc + j] = (bias ? bias[r] : 0) + sum_k a[k * mr + r] * b[k * nr + j].
using TileFn = void (*)(int K, const float* a, int mr, const float* b, int nc, const float* bias,
                        float* c, std::ptrdiff_t ldc);

struct GemmIsa {
  const char* name;
  int mr;  // most rows of A in one tile
  int nr;  // columns of one packed B panel
  TileFn tile;
};

// The best micro-kernel this CPU runs (AVX-512F, AVX2+FMA, or portable C++), chosen once.
const GemmIsa& gemm_isa();

// Per-ISA entry points (defined in gemm_<isa>.cc, each compiled with its own -m flags).
const GemmIsa& gemm_isa_avx512();
const GemmIsa& gemm_isa_avx2();
const GemmIsa& gemm_isa_generic();

}  // namespace onnxopt
