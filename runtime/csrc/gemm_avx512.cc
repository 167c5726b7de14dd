// AVX-512F micro-kernel: up to 12 rows x 32 columns (two zmm per row, 24 accumulators).
// Compiled with -mavx512f -mfma; only called after a runtime CPU check (see gemm.cc).
#include <immintrin.h>

#include "gemm.h"
#include "pack.h"

namespace onnxopt {
namespace {

constexpr int kMR = 12;
constexpr int kNR = 32;

// The epilogue on a vector of sums (see Epilogue): + residual (masked load), then clamp.
inline __m512 finish(__m512 x, const Epilogue* ep, const float* residual, __mmask16 m) {
  if (residual) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, residual));
  // max(lo, x) / min(hi, x) return x when x is NaN (second operand)
  return _mm512_min_ps(_mm512_set1_ps(ep->hi), _mm512_max_ps(_mm512_set1_ps(ep->lo), x));
}

// B rows ldb apart; Masked: loads only the nc columns (b may be an unpacked plane, see direct_b).
template <int MR, int NV, bool Masked>
void tile(int K, const float* a, const float* b, std::ptrdiff_t ldb, int nc, const float* bias, float* c,
          std::ptrdiff_t ldc, const Epilogue* ep) {
  __mmask16 mask[NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) {
    const int left = nc - 16 * v;
    mask[v] = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
  }
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
    for (int v = 0; v < NV; ++v) bv[v] = Masked ? _mm512_maskz_loadu_ps(mask[v], b + 16 * v) : _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
    }
    a += MR;
    b += ldb;
  }
  if (ep) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v)
        acc[r][v] = finish(acc[r][v], ep, ep->residual ? ep->residual + r * ep->ldr + 16 * v : nullptr, mask[v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(c + r * ldc + 16 * v, mask[v], acc[r][v]);
  }
}

using Fn = void (*)(int, const float*, const float*, std::ptrdiff_t, int, const float*, float*, std::ptrdiff_t,
                   const Epilogue*);

// Indexed by [rows - 1][vectors - 1].  No std:: templates in this file: an out-of-line copy
// compiled with this file's -m flags could be picked by the linker for other files.
const Fn kTable[kMR][2] = {
    {&tile<1, 1, false>, &tile<1, 2, false>},
    {&tile<2, 1, false>, &tile<2, 2, false>},
    {&tile<3, 1, false>, &tile<3, 2, false>},
    {&tile<4, 1, false>, &tile<4, 2, false>},
    {&tile<5, 1, false>, &tile<5, 2, false>},
    {&tile<6, 1, false>, &tile<6, 2, false>},
    {&tile<7, 1, false>, &tile<7, 2, false>},
    {&tile<8, 1, false>, &tile<8, 2, false>},
    {&tile<9, 1, false>, &tile<9, 2, false>},
    {&tile<10, 1, false>, &tile<10, 2, false>},
    {&tile<11, 1, false>, &tile<11, 2, false>},
    {&tile<12, 1, false>, &tile<12, 2, false>}};
// The same loading only nc columns of B (a full vector where nc covers it).
const Fn kMasked[kMR][2] = {
    {&tile<1, 1, true>, &tile<1, 2, true>},
    {&tile<2, 1, true>, &tile<2, 2, true>},
    {&tile<3, 1, true>, &tile<3, 2, true>},
    {&tile<4, 1, true>, &tile<4, 2, true>},
    {&tile<5, 1, true>, &tile<5, 2, true>},
    {&tile<6, 1, true>, &tile<6, 2, true>},
    {&tile<7, 1, true>, &tile<7, 2, true>},
    {&tile<8, 1, true>, &tile<8, 2, true>},
    {&tile<9, 1, true>, &tile<9, 2, true>},
    {&tile<10, 1, true>, &tile<10, 2, true>},
    {&tile<11, 1, true>, &tile<11, 2, true>},
    {&tile<12, 1, true>, &tile<12, 2, true>}};

// Narrow column tail (nc <= 8 columns): vectorised along the rows instead of the
// columns.  Each k step loads the mr packed weights of A as one masked vector and multiplies it by
// the nc broadcast inputs, so the FMAs do nc instead of mr vector operations (12 for a 1..4-column
// tail of a 12-row tile through tile<12, 1>).  U interleaved partial sums per column hide the FMA
// latency; they are added in a fixed order at the end (results do not depend on anything but the
// shape).
template <int NC>
void narrow(int K, const float* a, int mr, const float* b, std::ptrdiff_t ldb, const float* bias, float* c,
            std::ptrdiff_t ldc, const Epilogue* ep) {
  constexpr int U = NC == 1 ? 8 : NC <= 3 ? 4 : 2;
  const __mmask16 m = static_cast<__mmask16>((1u << mr) - 1u);
  __m512 acc[U][NC];
#pragma GCC unroll 8
  for (int u = 0; u < U; ++u) {
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) acc[u][j] = _mm512_setzero_ps();
  }
  if (bias) {
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
        acc[u][j] = _mm512_fmadd_ps(av, _mm512_set1_ps(b[(k + u) * ldb + j]), acc[u][j]);
    }
  }
  for (; k < K; ++k) {
    const __m512 av = _mm512_maskz_loadu_ps(m, a + k * mr);
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) acc[0][j] = _mm512_fmadd_ps(av, _mm512_set1_ps(b[k * ldb + j]), acc[0][j]);
  }
  alignas(64) float out[NC][16];
#pragma GCC unroll 8
  for (int j = 0; j < NC; ++j) {
    __m512 s = acc[0][j];
#pragma GCC unroll 8
    for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[u][j]);
    _mm512_store_ps(out[j], s);
  }
  if (ep) {
    for (int r = 0; r < mr; ++r) {
      for (int j = 0; j < NC; ++j) {
        float v = out[j][r];
        if (ep->residual) v += ep->residual[r * ep->ldr + j];
        v = v < ep->lo ? ep->lo : v;  // NaN stays NaN, as max(lo, x) in finish()
        c[r * ldc + j] = v > ep->hi ? ep->hi : v;
      }
    }
    return;
  }
  for (int r = 0; r < mr; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) c[r * ldc + j] = out[j][r];
  }
}

using NarrowFn = void (*)(int, const float*, int, const float*, std::ptrdiff_t, const float*, float*, std::ptrdiff_t,
                         const Epilogue*);
const NarrowFn kNarrow[8] = {&narrow<1>, &narrow<2>, &narrow<3>, &narrow<4>,
                             &narrow<5>, &narrow<6>, &narrow<7>, &narrow<8>};

// Full 16-column vectors go through tile<>; a short rest (<= 8 columns) through narrow<>, so
// tails such as 7x7 = 49 = 32 + 16 + 1 positions cost 1 column, not 16.  The choice depends on
// nc only (not on mr), so how the rows are split never changes how an output is summed.
void tile_ep(int K, const float* a, int mr, const float* b, std::ptrdiff_t ldb, int nc, const float* bias, float* c,
             std::ptrdiff_t ldc, const Epilogue* ep) {
  const int full = nc / 16, rest = nc % 16;
  // packed panels are zero-padded to kNR: full-vector loads; other B only its nc columns
  const Fn (&table)[kMR][2] = ldb == kNR || nc % 16 == 0 ? kTable : kMasked;
  if (rest == 0 || rest > 8) {
    table[mr - 1][nc > 16 ? 1 : 0](K, a, b, ldb, nc, bias, c, ldc, ep);
    return;
  }
  if (full > 0) kTable[mr - 1][full - 1](K, a, b, ldb, 16 * full, bias, c, ldc, ep);
  Epilogue rest_ep;
  if (ep) rest_ep = Epilogue{ep->residual ? ep->residual + 16 * full : nullptr, ep->ldr, ep->lo, ep->hi};
  kNarrow[rest - 1](K, a, mr, b + 16 * full, ldb, bias, c + 16 * full, ldc, ep ? &rest_ep : nullptr);
}

void tile_dispatch(int K, const float* a, int mr, const float* b, int nc, const float* bias, float* c,
                   std::ptrdiff_t ldc) {
  tile_ep(K, a, mr, b, kNR, nc, bias, c, ldc, nullptr);
}

// B rows of a gathered panel are prefetched this many k ahead (they lie a plane apart: no
// hardware prefetcher follows them).
constexpr int kAhead = 4;

// A bitmap word straight from memory into a mask register: one load.  (Through a general
// register, gcc's kmovw costs a port-5 uop, a slot of the 512-bit FMAs.)
inline __mmask16 load_mask(const std::uint16_t* m) {
  __mmask16 k;
  asm("kmovw %1, %0" : "=k"(k) : "m"(*m));
  return k;
}

// GatherPackFn: one masked load and one aligned store per 16 positions.  (The tiles gathered B
// themselves before, a masked load per k in every row block: zero-masking loads cost ~10 % of a
// tile here, and each panel's were repeated for every block of 12 output channels.)
void gather_pack(int K, const float* const* rows, const std::uint16_t* const* masks, std::int64_t p, int nc, int nr,
                 float* dst) {
  const std::int64_t word = p / 16;
  const int nv = nc / 16;
  for (int k = 0; k < K; ++k) {
    if (k + kAhead < K) {
      const char* ahead = reinterpret_cast<const char*>(rows[k + kAhead] + p);
      for (int line = 0; line <= nv; ++line) _mm_prefetch(ahead + 64 * line, _MM_HINT_T0);  // 16 nv floats, any alignment
    }
    const float* row = rows[k] + p;
    const std::uint16_t* m = masks[k] + word;
    float* out = dst + static_cast<std::int64_t>(k) * nr;
    for (int v = 0; v < nv; ++v) _mm512_store_ps(out + 16 * v, _mm512_maskz_loadu_ps(load_mask(m + v), row + 16 * v));
  }
}

__mmask16 bits(int from, int to) {  // lanes [from, to) of 16, clamped
  from = from < 0 ? 0 : from > 16 ? 16 : from;
  to = to < from ? from : to > 16 ? 16 : to;
  return static_cast<__mmask16>(((1u << to) - 1u) & ~((1u << from) - 1u));
}

void pack_runs(const PackJob& job) {
  pack_block(job, [](float* dst, const float* src, int n, int lo, int hi) {
    for (int t = 0; t < n; t += 16) {
      const __m512 v = _mm512_maskz_loadu_ps(bits(lo - t, hi - t), src + t);
      _mm512_mask_storeu_ps(dst + t, bits(0, n - t), v);
    }
  });
}

// 16-position vectors whose lane coordinates are worked out together (stack arrays: 3 KiB).
constexpr int kChunk = 16;

// Stride 2 along the width: instead of one 16-lane gather per vector, each output row segment
// is de-interleaved from two consecutive input vectors (one permute) into a small buffer that
// holds a chunk of positions in order, which is then copied into the panels.
void pack_stride2(const PackJob& job) {
  const std::int64_t plane = job.height * job.width;
  const std::int64_t wo = job.out_width;
  const std::int64_t per_panel = job.nr / 16;
  const std::int64_t vectors = (job.cols + job.nr - 1) / job.nr * per_panel;
  const std::int64_t panel_stride = job.k * job.nr;
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i even = _mm512_add_epi32(iota, iota);
  const __m512i width = _mm512_set1_epi32(static_cast<int>(job.width));
  struct Segment {
    std::int64_t row;  // output row i * stride_h
    std::int32_t j, count, at;  // first output column, length, place in the buffer
  };
  for (std::int64_t v0 = 0; v0 < vectors; v0 += kChunk) {
    const int nv = static_cast<int>(vectors - v0 < kChunk ? vectors - v0 : kChunk);
    const std::int64_t c0 = v0 * 16;
    const std::int64_t c1 = job.cols < c0 + 16 * nv ? job.cols : c0 + 16 * nv;
    __mmask16 valid[kChunk];
    std::int64_t offset[kChunk];
    for (int v = 0; v < nv; ++v) {
      const std::int64_t n = job.cols - (c0 + 16 * v);
      valid[v] = n >= 16 ? static_cast<__mmask16>(0xFFFF) : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1u);
      offset[v] = (v0 + v) / per_panel * panel_stride + (v0 + v) % per_panel * 16;
    }
    Segment segs[16 * kChunk];
    int nseg = 0;
    for (std::int64_t c = c0; c < c1;) {
      const std::int64_t p = job.p0 + c;
      const std::int64_t i = p / wo, j = p - i * wo;
      const std::int64_t n = wo - j < c1 - c ? wo - j : c1 - c;
      segs[nseg++] = Segment{i * job.stride_h, static_cast<std::int32_t>(j), static_cast<std::int32_t>(n),
                             static_cast<std::int32_t>(c - c0)};
      c += n;
    }
    alignas(64) float buf[16 * kChunk + 16];
    for (std::int64_t kk = 0; kk < job.k; ++kk) {
      const std::int32_t* a = job.address + 3 * kk;
      const std::int64_t dy = a[1], dx = a[2];
      const float* image = job.image + a[0] * plane;
      for (int q = 0; q < nseg; ++q) {
        const Segment& sg = segs[q];
        const std::int64_t y = sg.row + dy;
        float* out = buf + sg.at;
        if (y < 0 || y >= job.height) {
          for (int t = 0; t < sg.count; t += 16) _mm512_storeu_ps(out + t, _mm512_setzero_ps());
          continue;
        }
        const float* row = image + y * job.width;
        for (int t = 0; t < sg.count; t += 16) {
          const std::int64_t x0 = 2 * (sg.j + t) + dx;  // input column of lane 0
          if (x0 + 32 <= 0 || x0 >= job.width) {
            _mm512_storeu_ps(out + t, _mm512_setzero_ps());
            continue;
          }
          const __m512i x = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(x0)));
          const __mmask16 m0 = _mm512_cmplt_epu32_mask(x, width);
          const __mmask16 m1 = _mm512_cmplt_epu32_mask(_mm512_add_epi32(x, _mm512_set1_epi32(16)), width);
          const __m512 lo = _mm512_maskz_loadu_ps(m0, row + x0);
          const __m512 hi = _mm512_maskz_loadu_ps(m1, row + x0 + 16);
          _mm512_storeu_ps(out + t, _mm512_permutex2var_ps(lo, even, hi));
        }
      }
      float* dst = job.packed + kk * job.nr;
      for (int v = 0; v < nv; ++v) _mm512_storeu_ps(dst + offset[v], _mm512_maskz_loadu_ps(valid[v], buf + 16 * v));
    }
  }
}

// Vectorised gather: each 16-position vector of a panel knows its lanes' input row
// i*stride_h, column j*stride_w and flat index (worked out once per chunk of vectors); per
// channel, two unsigned compares against the image size give the lanes inside the image, and one
// masked load (stride 1: the 16 sources are consecutive in memory, row ends included, since
// out_width == width) or one masked gather (other strides) fills the 16 columns, zeros elsewhere.
// Whole 64-byte vectors are written.  Any panel width that is a multiple of 16.
void pack(const PackJob& job) {
  const std::int64_t limit = std::int64_t{1} << 30;
  if (job.nr % 16 != 0 || job.height * job.width >= limit || job.stride_h * job.height >= limit ||
      job.stride_w * job.width >= limit) {
    pack_runs(job);
    return;
  }
  if (job.stride_w == 2) {
    pack_stride2(job);
    return;
  }
  const std::int64_t plane = job.height * job.width;
  const std::int64_t wo = job.out_width;
  const bool flat = job.stride_h == 1 && job.stride_w == 1;
  const std::int64_t per_panel = job.nr / 16;
  const std::int64_t vectors = (job.cols + job.nr - 1) / job.nr * per_panel;
  const std::int64_t panel_stride = job.k * job.nr;
  const __m512i height = _mm512_set1_epi32(static_cast<int>(job.height));
  const __m512i width = _mm512_set1_epi32(static_cast<int>(job.width));
  for (std::int64_t v0 = 0; v0 < vectors; v0 += kChunk) {
    const int nv = static_cast<int>(vectors - v0 < kChunk ? vectors - v0 : kChunk);
    alignas(64) std::int32_t rows[kChunk][16], cols[kChunk][16], index[kChunk][16];
    __mmask16 valid[kChunk];
    std::int64_t first[kChunk], offset[kChunk];
    for (int v = 0; v < nv; ++v) {
      const std::int64_t c0 = (v0 + v) * 16;
      first[v] = job.p0 + c0;
      offset[v] = (v0 + v) / per_panel * panel_stride + (v0 + v) % per_panel * 16;
      const std::int64_t n = job.cols - c0;
      valid[v] = n >= 16 ? static_cast<__mmask16>(0xFFFF) : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1u);
      for (int t = 0; t < 16; ++t) {
        const std::int64_t p = job.p0 + c0 + t;
        const std::int64_t i = p / wo, j = p - i * wo;
        rows[v][t] = static_cast<std::int32_t>(i * job.stride_h);
        cols[v][t] = static_cast<std::int32_t>(j * job.stride_w);
        index[v][t] = static_cast<std::int32_t>(i * job.stride_h * job.width + j * job.stride_w);
      }
    }
    for (std::int64_t kk = 0; kk < job.k; ++kk) {
      const std::int32_t* a = job.address + 3 * kk;
      const __m512i dy = _mm512_set1_epi32(a[1]), dx = _mm512_set1_epi32(a[2]);
      const float* image = job.image + a[0] * plane;
      const std::int64_t shift = static_cast<std::int64_t>(a[1]) * job.width + a[2];
      float* dst = job.packed + kk * job.nr;
      for (int v = 0; v < nv; ++v) {
        const __m512i y = _mm512_add_epi32(_mm512_load_si512(rows[v]), dy);
        const __m512i x = _mm512_add_epi32(_mm512_load_si512(cols[v]), dx);
        const __mmask16 m = valid[v] & _mm512_cmplt_epu32_mask(y, height) & _mm512_cmplt_epu32_mask(x, width);
        __m512 val = _mm512_setzero_ps();
        if (m) {
          val = flat ? _mm512_maskz_loadu_ps(m, image + (first[v] + shift))
                     : _mm512_mask_i32gather_ps(val, m, _mm512_load_si512(index[v]), image + shift, 4);
        }
        _mm512_storeu_ps(dst + offset[v], val);
      }
    }
  }
}

// Channel-vectorised tile (see ChannelGemm in gemm.h): R positions x 32 channels, the same
// register budget as tile<12, 2> (up to 28 accumulators), so 49 positions are 13 + 12 + 12 + 12
// rows with no wasted lanes.  The transposed result goes through a small buffer: for each channel
// one gather of its R values and one store of R consecutive outputs.
constexpr int kRows = 14;
constexpr int kNW = 32;

template <int R>
void ctile(int K, const float* w, int nch, const float* b, std::ptrdiff_t ldb, const float* bias, float* c,
           std::ptrdiff_t ldc, const Epilogue* ep) {
  __m512 acc[R][2];
  __m512 init[2];
  const __mmask16 cm0 = nch >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << nch) - 1u);
  const __mmask16 cm1 = nch >= 32 ? static_cast<__mmask16>(0xFFFF) : nch <= 16 ? 0 : static_cast<__mmask16>((1u << (nch - 16)) - 1u);
  init[0] = bias ? _mm512_maskz_loadu_ps(cm0, bias) : _mm512_setzero_ps();
  init[1] = bias ? _mm512_maskz_loadu_ps(cm1, bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    acc[r][0] = init[0];
    acc[r][1] = init[1];
  }
#pragma GCC unroll 2
  for (int k = 0; k < K; ++k) {
    const __m512 w0 = _mm512_loadu_ps(w);
    const __m512 w1 = _mm512_loadu_ps(w + 16);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 br = _mm512_set1_ps(b[r]);
      acc[r][0] = _mm512_fmadd_ps(br, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(br, w1, acc[r][1]);
    }
    w += kNW;
    b += ldb;
  }
  alignas(64) float buf[R][kNW];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    _mm512_store_ps(buf[r], acc[r][0]);
    _mm512_store_ps(buf[r] + 16, acc[r][1]);
  }
  const __mmask16 rm = static_cast<__mmask16>((1u << R) - 1u);
  const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(kNW));
  for (int ch = 0; ch < nch; ++ch) {
    __m512 col = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), rm, idx, &buf[0][ch], 4);
    if (ep) col = finish(col, ep, ep->residual ? ep->residual + ch * ep->ldr : nullptr, rm);
    _mm512_mask_storeu_ps(c + ch * ldc, rm, col);
  }
}

using CFn = void (*)(int, const float*, int, const float*, std::ptrdiff_t, const float*, float*, std::ptrdiff_t,
                    const Epilogue*);
const CFn kCTable[kRows] = {&ctile<1>, &ctile<2>, &ctile<3>,  &ctile<4>,  &ctile<5>,  &ctile<6>,  &ctile<7>,
                            &ctile<8>, &ctile<9>, &ctile<10>, &ctile<11>, &ctile<12>, &ctile<13>, &ctile<14>};

void ctile_ep(int K, const float* w, int nch, const float* b, std::ptrdiff_t ldb, int rows, const float* bias,
              float* c, std::ptrdiff_t ldc, const Epilogue* ep) {
  kCTable[rows - 1](K, w, nch, b, ldb, bias, c, ldc, ep);
}

void ctile_dispatch(int K, const float* w, int nch, const float* b, std::ptrdiff_t ldb, int rows, const float* bias,
                    float* c, std::ptrdiff_t ldc) {
  ctile_ep(K, w, nch, b, ldb, rows, bias, c, ldc, nullptr);
}

}  // namespace

const GemmIsa& gemm_isa_avx512() {
  static const GemmIsa isa{"avx512f", kMR, kNR, &tile_dispatch, &pack, &tile_ep, true, &gather_pack};
  return isa;
}

const ChannelGemm& gemm_channel_avx512() {
  static const ChannelGemm isa{"avx512f", kRows, kNW, &ctile_dispatch, &ctile_ep};
  return isa;
}

}  // namespace onnxopt
