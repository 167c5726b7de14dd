// AVX-512F inner loops of the blocked AddressConv layout (see blocked_conv.h).
// No std:: templates in this file: an out-of-line copy compiled with -mavx512f could be picked by
// the linker for code that runs on CPUs without AVX-512.
// gcc 12's own intrinsic headers trip -W(maybe-)uninitialized (their _mm*_undefined_* helpers).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstdint>

#include "blocked_conv.h"

namespace onnxopt {
namespace {

// R positions x F blocks of 16 output channels in 24 or fewer accumulators; PS the floats between
// consecutive positions' reads when known at compile time (0: t.pos_stride).  Per input channel:
// F weight vectors, R broadcasts of the displaced input (one load each from that channel's own
// read pointer, the border makes every read valid), R * F FMAs.  Fully unrolled so that gcc keeps the accumulators in registers (with
// plain loops it spilled them to the stack at the start of every tile: 5-10 % slower).
template <int R, int F, int PS>
void tile(const BlockedTile& t) {
  __m512 acc[R][F];
  if (t.bias) {
#pragma GCC unroll 4
    for (int f = 0; f < F; ++f) {
      const __m512 b = _mm512_loadu_ps(t.bias + 16 * f);
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) acc[r][f] = b;
    }
  } else {  // continuing the partial sums stored by the previous chunk of input channels
#pragma GCC unroll 4
    for (int f = 0; f < F; ++f) {
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) acc[r][f] = _mm512_loadu_ps(t.out + f * t.out_stride + 16 * r);
    }
  }
  const float* w = t.w;
  const std::int64_t ws = t.w_stride;
  // A constant stride makes the R reads' offsets immediates.  With t.pos_stride, gcc keeps R
  // offsets in general registers, runs out at R = 12 and moves them through vector registers
  // (vmovq) and the stack inside the k loop, where the vmovq compete with the FMAs for port 0.
  const std::int64_t ps = PS ? PS : t.pos_stride, first = t.first;
#pragma GCC unroll 2
  for (int k = 0; k < t.k; ++k) {
    const float* p = t.src[k] + first;
    // p opaque from here: otherwise gcc folds `first` into R index registers, one per position
    // (spilling at R = 12), instead of one add and R immediate offsets.
    if (PS) asm("" : "+r"(p));
    __m512 wv[F];
#pragma GCC unroll 4
    for (int f = 0; f < F; ++f) wv[f] = _mm512_loadu_ps(w + f * ws + 16 * k);
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      const __m512 v = _mm512_set1_ps(p[r * ps]);
#pragma GCC unroll 4
      for (int f = 0; f < F; ++f) acc[r][f] = _mm512_fmadd_ps(v, wv[f], acc[r][f]);
    }
  }
  // Locals: the stores below may alias `t` as far as the compiler knows, which made it reload
  // t.out before every store.
  float* const out = t.out;
  const float* const res = t.residual;
  const std::int64_t os = t.out_stride;
  if (res) {
#pragma GCC unroll 4
    for (int f = 0; f < F; ++f) {
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) acc[r][f] = _mm512_add_ps(acc[r][f], _mm512_loadu_ps(res + f * os + 16 * r));
    }
  }
  // max then min, as in the NCHW kernels: a NaN sum stays NaN (the operands' order matters).  A
  // bound at infinity changes no number and no NaN, so it is skipped.
  if (t.lo != -__builtin_inff()) {
    const __m512 lo = _mm512_set1_ps(t.lo);
#pragma GCC unroll 4
    for (int f = 0; f < F; ++f) {
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) acc[r][f] = _mm512_max_ps(lo, acc[r][f]);
    }
  }
  if (t.hi != __builtin_inff()) {
    const __m512 hi = _mm512_set1_ps(t.hi);
#pragma GCC unroll 4
    for (int f = 0; f < F; ++f) {
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) acc[r][f] = _mm512_min_ps(hi, acc[r][f]);
    }
  }
  if (t.last_lanes != 0xFFFF) {
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) acc[r][F - 1] = _mm512_maskz_mov_ps(t.last_lanes, acc[r][F - 1]);
  }
#pragma GCC unroll 4
  for (int f = 0; f < F; ++f) {
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + f * os + 16 * r, acc[r][f]);
  }
}

// Every tile of one position stride.
#define ONNXOPT_TILES(PS)                                                                                        \
  {                                                                                                              \
    {&tile<1, 1, PS>, &tile<2, 1, PS>, &tile<3, 1, PS>, &tile<4, 1, PS>, &tile<5, 1, PS>, &tile<6, 1, PS>,       \
     &tile<7, 1, PS>, &tile<8, 1, PS>, &tile<9, 1, PS>, &tile<10, 1, PS>, &tile<11, 1, PS>, &tile<12, 1, PS>},   \
        {&tile<1, 2, PS>, &tile<2, 2, PS>, &tile<3, 2, PS>, &tile<4, 2, PS>, &tile<5, 2, PS>, &tile<6, 2, PS>,   \
         &tile<7, 2, PS>, &tile<8, 2, PS>, &tile<9, 2, PS>, &tile<10, 2, PS>, &tile<11, 2, PS>,                  \
         &tile<12, 2, PS>},                                                                                      \
        {&tile<1, 3, PS>, &tile<2, 3, PS>, &tile<3, 3, PS>, &tile<4, 3, PS>, &tile<5, 3, PS>, &tile<6, 3, PS>,   \
         &tile<7, 3, PS>, &tile<8, 3, PS>, nullptr, nullptr, nullptr, nullptr},                                  \
        {&tile<1, 4, PS>, &tile<2, 4, PS>, &tile<3, 4, PS>, &tile<4, 4, PS>, &tile<5, 4, PS>, &tile<6, 4, PS>,   \
         nullptr, nullptr, nullptr, nullptr, nullptr, nullptr},                                                  \
  }

// By position stride: any (read from the tile), 16 (a blocked input at stride 1), 32 (stride 2),
// 1 (an entry conv's NCHW planes at stride 1).
const BlockedTileFn kTiles[4][kBlockedMaxF][12] = {ONNXOPT_TILES(0), ONNXOPT_TILES(16), ONNXOPT_TILES(32),
                                                   ONNXOPT_TILES(1)};
#undef ONNXOPT_TILES

}  // namespace

BlockedTileFn blocked_tile_avx512(int r, int f, std::int64_t pos_stride) {
  const int variant = pos_stride == 16 ? 1 : pos_stride == 32 ? 2 : pos_stride == 1 ? 3 : 0;
  return kTiles[variant][f - 1][r - 1];
}

// r[i] (i < 16) := the 16 x 16 transpose of r (lane j of r[i] becomes lane i of r[j]).
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    u[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    u[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    u[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    u[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  // u[4g + m] holds, per 128-bit lane q, rows 4g..4g+3 at column 4q + m
  for (int m = 0; m < 4; ++m) {
    const __m512 a = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88), b = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xdd);
    const __m512 c = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88), d = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xdd);
    r[m] = _mm512_shuffle_f32x4(a, c, 0x88);       // column m
    r[8 + m] = _mm512_shuffle_f32x4(a, c, 0xdd);   // column 8 + m
    r[4 + m] = _mm512_shuffle_f32x4(b, d, 0x88);   // column 4 + m
    r[12 + m] = _mm512_shuffle_f32x4(b, d, 0xdd);  // column 12 + m
  }
}

// One input row of one channel block, 16 positions at a time: the 16 channel rows (a plane
// apart; missing channels and positions read as 0) transposed in registers, one store per
// position.  (Gathering each position's 16 channels instead: 4x slower, its 16 reads all map to
// one L1 set when the plane is 4 KiB.)
void to_blocked_row_avx512(const float* x, std::int64_t plane, std::int64_t channels, std::int64_t width,
                           float* y) {
  __m512 r[16];
  for (std::int64_t j = 0; j < width; j += 16) {
    const std::int64_t n = width - j < 16 ? width - j : 16;
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
    for (int c = 0; c < 16; ++c)
      r[c] = c < channels ? _mm512_maskz_loadu_ps(m, x + c * plane + j) : _mm512_setzero_ps();
    transpose16(r);
    for (std::int64_t p = 0; p < n; ++p) _mm512_storeu_ps(y + 16 * (j + p), r[p]);
  }
}

// The reverse: per real channel, 16 positions at a time gathered from their 16-float cells.
void from_blocked_row_avx512(const float* x, std::int64_t plane, std::int64_t channels, std::int64_t width,
                             float* y) {
  const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i index = _mm512_slli_epi32(lanes, 4);
  for (std::int64_t c = 0; c < channels; ++c) {
    float* row = y + c * plane;
    std::int64_t j = 0;
    for (; j + 16 <= width; j += 16)
      _mm512_storeu_ps(row + j, _mm512_i32gather_ps(index, x + 16 * j + c, 4));
    if (j < width) {
      const __mmask16 m = static_cast<__mmask16>((1u << (width - j)) - 1u);
      _mm512_mask_storeu_ps(row + j, m, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, index, x + 16 * j + c, 4));
    }
  }
}

}  // namespace onnxopt
