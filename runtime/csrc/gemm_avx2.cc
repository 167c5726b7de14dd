// AVX2+FMA micro-kernel: up to 6 rows x 16 columns (two ymm per row, 12 accumulators).
// Compiled with -mavx2 -mfma; only called after a runtime CPU check (see gemm.cc).
#include <immintrin.h>

#include "gemm.h"
#include "pack.h"

namespace onnxopt {
namespace {

constexpr int kMR = 6;
constexpr int kNR = 16;

__m256i lane_mask(int left) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), lanes);
}

template <int MR, int NV>
void tile(int K, const float* a, const float* b, std::ptrdiff_t ldb, int nc, const float* bias, float* c,
          std::ptrdiff_t ldc, const Epilogue* ep) {
  __m256 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    const __m256 init = bias ? _mm256_set1_ps(bias[r]) : _mm256_setzero_ps();
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = init;
  }
#pragma GCC unroll 2
  for (int k = 0; k < K; ++k) {
    __m256 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_loadu_ps(b + 8 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 ar = _mm256_broadcast_ss(a + r);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(ar, bv[v], acc[r][v]);
    }
    a += MR;
    b += ldb;
  }
  if (ep) {
    const __m256 lo = _mm256_set1_ps(ep->lo), hi = _mm256_set1_ps(ep->hi);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        __m256 x = acc[r][v];
        if (ep->residual) {
          const float* res = ep->residual + r * ep->ldr + 8 * v;
          x = _mm256_add_ps(x, nc >= 8 * (v + 1) ? _mm256_loadu_ps(res) : _mm256_maskload_ps(res, lane_mask(nc - 8 * v)));
        }
        acc[r][v] = _mm256_min_ps(hi, _mm256_max_ps(lo, x));  // NaN x stays NaN (second operand)
      }
    }
  }
  if (nc == NV * 8) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) _mm256_storeu_ps(c + r * ldc + 8 * v, acc[r][v]);
    }
    return;
  }
  __m256i mask[NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) mask[v] = lane_mask(nc - 8 * v);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm256_maskstore_ps(c + r * ldc + 8 * v, mask[v], acc[r][v]);
  }
}

using Fn = void (*)(int, const float*, const float*, std::ptrdiff_t, int, const float*, float*, std::ptrdiff_t,
                   const Epilogue*);

// Indexed by [rows - 1][vectors - 1].  No std:: templates in this file: an out-of-line copy
// compiled with this file's -m flags could be picked by the linker for other files.
const Fn kTable[kMR][2] = {
    {&tile<1, 1>, &tile<1, 2>},
    {&tile<2, 1>, &tile<2, 2>},
    {&tile<3, 1>, &tile<3, 2>},
    {&tile<4, 1>, &tile<4, 2>},
    {&tile<5, 1>, &tile<5, 2>},
    {&tile<6, 1>, &tile<6, 2>}};

void tile_ep(int K, const float* a, int mr, const float* b, std::ptrdiff_t ldb, int nc, const float* bias, float* c,
             std::ptrdiff_t ldc, const Epilogue* ep) {
  kTable[mr - 1][nc > 8 ? 1 : 0](K, a, b, ldb, nc, bias, c, ldc, ep);
}

void tile_dispatch(int K, const float* a, int mr, const float* b, int nc, const float* bias, float* c,
                   std::ptrdiff_t ldc) {
  tile_ep(K, a, mr, b, kNR, nc, bias, c, ldc, nullptr);
}

void pack(const PackJob& job) {
  pack_block(job, [](float* dst, const float* src, int n, int lo, int hi) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int t = 0; t < n; t += 8) {
      const __m256i idx = _mm256_add_epi32(lanes, _mm256_set1_epi32(t));
      const __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(lo - 1)),
                                          _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), idx));
      const __m256 v = _mm256_maskload_ps(src + t, in);
      _mm256_maskstore_ps(dst + t, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx), v);
    }
  });
}

}  // namespace

const GemmIsa& gemm_isa_avx2() {
  static const GemmIsa isa{"avx2", kMR, kNR, &tile_dispatch, &pack, &tile_ep, false, nullptr};
  return isa;
}

}  // namespace onnxopt
