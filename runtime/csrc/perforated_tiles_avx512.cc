// AVX-512F tiles of PerforatedConv's K-blocked GEMM (see perforated_conv_kernels.h): gemm.h's
// 12x32 tile and its narrow column tail, but a tile either starts from the bias (first K block)
// or from the partial sums it stored for the previous K block (the later ones), so that one K
// block of the packed input (up to ~2304 k) stays in L2 while every row block of the weights
// runs over it.  Storing and reloading fp32 partial sums does not change them: the 12x32 tiles'
// sums are those of one full-K pass, in the same order (the narrow tail's are per K block).
// Compiled with -mavx512f -mfma; only called after the CPU check that chose the AVX-512 GEMM.
// No std:: templates in this file (an out-of-line copy could be picked for non-AVX-512 code).
#include <immintrin.h>

#include "perforated_conv_kernels.h"

namespace onnxopt {
namespace {

constexpr int kMR = 12;
constexpr int kNR = 32;

// FULL: nc == 16 * NV (unmasked loads and stores).  PF: while the k loop runs, prefetch the next
// tile's weights (pf, one line's worth per k step, into L2: a new stream every tile, which the
// hardware prefetcher only picks up after a few misses) and its partial sums (pc, MR rows of
// 2 lines, in the first MR steps).
template <int MR, int NV, bool FULL = false, bool PF = false>
inline __attribute__((always_inline)) void tile_body(int K, const float* a, const float* b, int nc,
                                                     const float* bias, bool load, float* c, std::ptrdiff_t ldc,
                                                     const float* pf = nullptr, const float* pc = nullptr) {
  __mmask16 mask[NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) {
    const int left = FULL ? 16 : nc - 16 * v;
    mask[v] = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
  }
  __m512 acc[MR][NV];
  if (load) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_maskz_loadu_ps(mask[v], c + r * ldc + 16 * v);
    }
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 init = bias ? _mm512_set1_ps(bias[r]) : _mm512_setzero_ps();
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = init;
    }
  }
#pragma GCC unroll 2
  for (int k = 0; k < K; ++k) {
    __m512 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
    if (PF) {
      _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T1);
      pf += MR;
      if (k < MR) {
        _mm_prefetch(reinterpret_cast<const char*>(pc + k * ldc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(pc + k * ldc + 16), _MM_HINT_T0);
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
    }
    a += MR;
    b += kNR;
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(c + r * ldc + 16 * v, mask[v], acc[r][v]);
  }
}

template <int MR, int NV>
void tile(int K, const float* a, const float* b, int nc, const float* bias, bool load, float* c,
          std::ptrdiff_t ldc) {
  tile_body<MR, NV>(K, a, b, nc, bias, load, c, ldc);
}

using Fn = void (*)(int, const float*, const float*, int, const float*, bool, float*, std::ptrdiff_t);

const Fn kTable[kMR][2] = {
    {&tile<1, 1>, &tile<1, 2>},   {&tile<2, 1>, &tile<2, 2>},   {&tile<3, 1>, &tile<3, 2>},
    {&tile<4, 1>, &tile<4, 2>},   {&tile<5, 1>, &tile<5, 2>},   {&tile<6, 1>, &tile<6, 2>},
    {&tile<7, 1>, &tile<7, 2>},   {&tile<8, 1>, &tile<8, 2>},   {&tile<9, 1>, &tile<9, 2>},
    {&tile<10, 1>, &tile<10, 2>}, {&tile<11, 1>, &tile<11, 2>}, {&tile<12, 1>, &tile<12, 2>}};

// Narrow column rest (<= 8 columns), vectorised along the rows (as gemm_avx512.cc's narrow<>):
// U partial sums per column, added in a fixed order at the end of each K block.
template <int NC>
void narrow(int K, const float* a, int mr, const float* b, const float* bias, bool load, float* c,
            std::ptrdiff_t ldc) {
  constexpr int U = NC == 1 ? 8 : NC <= 3 ? 4 : 2;
  const __mmask16 m = static_cast<__mmask16>((1u << mr) - 1u);
  __m512 acc[U][NC];
#pragma GCC unroll 8
  for (int u = 0; u < U; ++u) {
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) acc[u][j] = _mm512_setzero_ps();
  }
  if (load) {
    alignas(64) float in[NC][16];
    for (int r = 0; r < mr; ++r) {
#pragma GCC unroll 8
      for (int j = 0; j < NC; ++j) in[j][r] = c[r * ldc + j];
    }
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) acc[0][j] = _mm512_maskz_load_ps(m, in[j]);
  } else if (bias) {
    const __m512 bv = _mm512_maskz_loadu_ps(m, bias);
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) acc[0][j] = bv;
  }
  int k = 0;
  for (; k + U <= K; k += U) {
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      const __m512 av = _mm512_maskz_loadu_ps(m, a + (k + u) * mr);
#pragma GCC unroll 8
      for (int j = 0; j < NC; ++j)
        acc[u][j] = _mm512_fmadd_ps(av, _mm512_set1_ps(b[(k + u) * kNR + j]), acc[u][j]);
    }
  }
  for (; k < K; ++k) {
    const __m512 av = _mm512_maskz_loadu_ps(m, a + k * mr);
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) acc[0][j] = _mm512_fmadd_ps(av, _mm512_set1_ps(b[k * kNR + j]), acc[0][j]);
  }
  alignas(64) float out[NC][16];
#pragma GCC unroll 8
  for (int j = 0; j < NC; ++j) {
    __m512 s = acc[0][j];
#pragma GCC unroll 8
    for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[u][j]);
    _mm512_store_ps(out[j], s);
  }
  for (int r = 0; r < mr; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) c[r * ldc + j] = out[j][r];
  }
}

using NarrowFn = void (*)(int, const float*, int, const float*, const float*, bool, float*, std::ptrdiff_t);
const NarrowFn kNarrow[8] = {&narrow<1>, &narrow<2>, &narrow<3>, &narrow<4>,
                             &narrow<5>, &narrow<6>, &narrow<7>, &narrow<8>};

// The choice of tile depends on nc only, never on mr or the K block.
void acc_tile(int K, const float* a, int mr, const float* b, int nc, const float* bias, bool load, float* c,
              std::ptrdiff_t ldc) {
  const int full = nc / 16, rest = nc % 16;
  if (rest == 0 || rest > 8) {
    kTable[mr - 1][nc > 16 ? 1 : 0](K, a, b, nc, bias, load, c, ldc);
    return;
  }
  if (full > 0) kTable[mr - 1][full - 1](K, a, b, 16 * full, bias, load, c, ldc);
  kNarrow[rest - 1](K, a, mr, b + 16 * full, bias, load, c + 16 * full, ldc);
}

// A panel's row blocks in one call: full-width 12- and 11-row tiles (what PackedWeights' row
// blocks mostly are) inlined here, anything else through acc_tile.
void acc_rows(int K, std::ptrdiff_t k0, const TileRow* rows, int n, const float* b, int nc, bool load, float* c,
              std::ptrdiff_t ldc, std::ptrdiff_t next_k0) {
  for (int i = 0; i < n; ++i) {
    const TileRow& r = rows[i];
    const float* a = r.a + k0 * r.mr;
    float* ci = c + r.c;
    // The next tile's weights (the next row block, or the first one of the next call) and
    // partial sums are prefetched as the tile goes.
    const float* next = i + 1 < n     ? rows[i + 1].a + k0 * rows[i + 1].mr
                        : next_k0 >= 0 ? rows[0].a + next_k0 * rows[0].mr
                                       : a;
    float* next_c = i + 1 < n ? c + rows[i + 1].c : ci;
    if (nc == kNR && r.mr == 12)
      tile_body<12, 2, true, true>(K, a, b, nc, r.bias, load, ci, ldc, next, next_c);
    else if (nc == kNR && r.mr == 11)
      tile_body<11, 2, true, true>(K, a, b, nc, r.bias, load, ci, ldc, next, next_c);
    else
      acc_tile(K, a, r.mr, b, nc, r.bias, load, ci, ldc);
  }
}

}  // namespace

PerforatedAccTileFn perforated_acc_tile_avx512() { return &acc_tile; }
PerforatedAccRowsFn perforated_acc_rows_avx512() { return &acc_rows; }

}  // namespace onnxopt
