// AVX-512F micro-kernel: up to 12 rows x 32 columns (two zmm per row, 24 accumulators).
// Compiled with -mavx512f -mfma; only called after a runtime CPU check (see gemm.cc).
#include <immintrin.h>

#include "gemm.h"

namespace onnxopt {
namespace {

constexpr int kMR = 12;
constexpr int kNR = 32;

template <int MR, int NV>
void tile(int K, const float* a, const float* b, int nc, const float* bias, float* c,
          std::ptrdiff_t ldc) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    const __m512 init = bias ? _mm512_set1_ps(bias[r]) : _mm512_setzero_ps();
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = init;
  }
#pragma GCC unroll 2
  for (int k = 0; k < K; ++k) {
    __m512 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
    }
    a += MR;
    b += kNR;
  }
  __mmask16 mask[NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) {
    const int left = nc - 16 * v;
    mask[v] = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(c + r * ldc + 16 * v, mask[v], acc[r][v]);
  }
}

using Fn = void (*)(int, const float*, const float*, int, const float*, float*, std::ptrdiff_t);

// Indexed by [rows - 1][vectors - 1].  No std:: templates in this file: an out-of-line copy
// compiled with this file's -m flags could be picked by the linker for other files.
const Fn kTable[kMR][2] = {
    {&tile<1, 1>, &tile<1, 2>},
    {&tile<2, 1>, &tile<2, 2>},
    {&tile<3, 1>, &tile<3, 2>},
    {&tile<4, 1>, &tile<4, 2>},
    {&tile<5, 1>, &tile<5, 2>},
    {&tile<6, 1>, &tile<6, 2>},
    {&tile<7, 1>, &tile<7, 2>},
    {&tile<8, 1>, &tile<8, 2>},
    {&tile<9, 1>, &tile<9, 2>},
    {&tile<10, 1>, &tile<10, 2>},
    {&tile<11, 1>, &tile<11, 2>},
    {&tile<12, 1>, &tile<12, 2>}};

void tile_dispatch(int K, const float* a, int mr, const float* b, int nc, const float* bias, float* c,
                   std::ptrdiff_t ldc) {
  kTable[mr - 1][nc > 16 ? 1 : 0](K, a, b, nc, bias, c, ldc);
}

}  // namespace

const GemmIsa& gemm_isa_avx512() {
  static const GemmIsa isa{"avx512f", kMR, kNR, &tile_dispatch};
  return isa;
}

}  // namespace onnxopt
