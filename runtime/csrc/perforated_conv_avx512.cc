// AVX-512F packing and fill of PerforatedConv (see perforated_conv_kernels.h).
// No std:: templates in this file: an out-of-line copy compiled with -mavx512f could be picked by
// the linker for code that runs on CPUs without AVX-512.
// gcc 12's own intrinsic headers trip -Wmaybe-uninitialized (their _mm*_undefined_* helpers).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "perforated_conv_kernels.h"

namespace onnxopt {
namespace {

constexpr int kMaxLanes = 4;  // nr <= 64

// One tap of one channel: plain loads where every offset is inside the image (they beat the
// gather instruction on the AMD cores measured: 0.42 vs 0.56 ms for 25 panels of K = 2304), a
// masked gather where some read the padding.
inline void pack_tap(const float* src, const std::int32_t* off, bool inside, int nr, float* dst) {
  if (inside && nr == 32) {
#pragma GCC unroll 32
    for (int j = 0; j < 32; ++j) dst[j] = src[off[j]];
    return;
  }
  const __m512i zero_i = _mm512_setzero_si512();
  for (int v = 0; v < nr / 16 && v < kMaxLanes; ++v) {
    const __m512i idx = _mm512_loadu_si512(off + 16 * v);
    const __mmask16 valid = _mm512_cmpge_epi32_mask(idx, zero_i);
    _mm512_storeu_ps(dst + 16 * v, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, idx, src, 4));
  }
}

// Channel-major: a channel plane is read for all taps at once.  (Measured and dropped: one
// 3-float load per column for the three taps of a row plus permutes, and software prefetch of
// the channel ahead: neither changed the packing time.)
void pack(const float* image, const PanelGeometry& g, const std::int32_t* offsets, const std::uint8_t* inside,
          int nr, float* dst) {
  const std::int64_t taps = g.kernel_h * g.kernel_w;
  for (std::int64_t c = 0; c < g.channels; ++c) {
    const float* src = image + c * g.plane;
    for (std::int64_t t = 0; t < taps; ++t) pack_tap(src, offsets + t * nr, inside[t] != 0, nr, dst + t * nr);
    dst += taps * nr;
  }
}

// Per 16 outputs, from the mask's FillVector: one 32-float window of the compact row per group
// of lanes (two loads and a permute each, merged with blends), gathers only where the sources
// spread over more than kMaxFillWindows windows.  (A gather per vector, what uniform masks mostly
// needed when one 16-float window was tried per vector, costs ~3x.)  Without `vectors`: one
// 16-float window where the sources fit, else a gather.  Reads up to 31 floats past
// src[count - 1] (the caller's buffer has that slack).
void fill(const float* src, const std::int32_t* index, const FillVector* vectors, std::int64_t count, float* dst) {
  std::int64_t q = 0;
  if (vectors) {
    for (; q + 16 <= count; q += 16, ++vectors) {
      const FillVector& f = *vectors;
      const __m512i idx = _mm512_loadu_si512(f.offset);
      const int windows = f.windows;
      if (windows == 0) {
        _mm512_storeu_ps(dst + q, _mm512_i32gather_ps(_mm512_loadu_si512(index + q), src, 4));
        continue;
      }
      const float* w0 = src + f.start[0];
      __m512 v = _mm512_permutex2var_ps(_mm512_loadu_ps(w0), idx, _mm512_loadu_ps(w0 + 16));
      for (int w = 1; w < windows; ++w) {
        const float* wn = src + f.start[w];
        v = _mm512_mask_mov_ps(v, f.mask[w], _mm512_permutex2var_ps(_mm512_loadu_ps(wn), idx, _mm512_loadu_ps(wn + 16)));
      }
      _mm512_storeu_ps(dst + q, v);
    }
  } else {
    for (; q + 16 <= count; q += 16) {
      const __m512i idx = _mm512_loadu_si512(index + q);
      const int lo = _mm512_reduce_min_epi32(idx);
      const int hi = _mm512_reduce_max_epi32(idx);
      if (hi - lo < 16) {
        const __m512 window = _mm512_loadu_ps(src + lo);
        _mm512_storeu_ps(dst + q, _mm512_permutexvar_ps(_mm512_sub_epi32(idx, _mm512_set1_epi32(lo)), window));
      } else {
        _mm512_storeu_ps(dst + q, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), 0xFFFF, idx, src, 4));
      }
    }
  }
  if (q < count) {
    const __mmask16 m = static_cast<__mmask16>((1u << (count - q)) - 1u);
    const __m512i idx = _mm512_maskz_loadu_epi32(m, index + q);
    _mm512_mask_storeu_ps(dst + q, m, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, src, 4));
  }
}

constexpr int kPrefetchChannels = 4;

inline void prefetch_lines(const float* plane, const std::int64_t* line, int lines) {
  for (int j = 0; j < lines; ++j) _mm_prefetch(reinterpret_cast<const char*>(plane + line[j]), _MM_HINT_T0);
}

// One group of ops (the segments of one 16-lane vector at one kernel row; consecutive in the
// plan, same dst; the N narrow ones first) over all channels: per channel a masked load per
// narrow segment and two per other segment (zeros outside the image), then per kernel column the
// segments' permutes (a one-table `vpermps` for the narrow ones, about half the cost of the
// two-table `vpermt2ps` here) merged in registers (the first one fills every lane, the others are
// blended in over their lanes) and one unmasked store.  Lanes that no segment fills (columns >= nc
// of the last panel) get values of the first segment's window: real inputs or zeros, which the
// tiles compute with but never store.  KW > 0: kernel_w fixed.  The first group prefetches the
// panel's input lines kPrefetchChannels channel planes ahead.
template <int S, int N, int KW>
void perm_group(const float* image, const PanelGeometry& g, const PermPlan& plan, const PermOp* ops, bool prefetch,
                std::int64_t nr, float* dst) {
  __m512i idx[S][KW];
  __mmask16 lo[S], hi[S], lanes[S];
  std::int64_t off[S];
#pragma GCC unroll 4
  for (int s = 0; s < S; ++s) {
    const __m512i base = _mm512_loadu_si512(plan.segment[ops[s].segment].index);
#pragma GCC unroll 8
    for (int kx = 0; kx < KW; ++kx) idx[s][kx] = _mm512_add_epi32(base, _mm512_set1_epi32(static_cast<int>(kx * g.dilation_w)));
    lo[s] = ops[s].lo;
    hi[s] = ops[s].hi;
    lanes[s] = ops[s].lanes;
    off[s] = ops[s].offset;
  }
  float* out = dst + ops[0].dst;
  const float* plane = image;
  const std::int64_t channels = g.channels, step = g.plane, stride = plan.stride;
  for (std::int64_t c = 0; c < channels; ++c, plane += step, out += stride) {
    if (prefetch && c + kPrefetchChannels < channels)
      prefetch_lines(plane + kPrefetchChannels * step, plan.line, plan.lines);
    __m512 l[S], h[S];
#pragma GCC unroll 4
    for (int s = 0; s < S; ++s) {
      l[s] = _mm512_maskz_loadu_ps(lo[s], plane + off[s]);
      if (s >= N) h[s] = _mm512_maskz_loadu_ps(hi[s], plane + off[s] + 16);
    }
#pragma GCC unroll 8
    for (int kx = 0; kx < KW; ++kx) {
      __m512 v = N > 0 ? _mm512_permutexvar_ps(idx[0][kx], l[0]) : _mm512_permutex2var_ps(l[0], idx[0][kx], h[0]);
#pragma GCC unroll 4
      for (int s = 1; s < S; ++s)
        v = _mm512_mask_mov_ps(v, lanes[s],
                               s < N ? _mm512_permutexvar_ps(idx[s][kx], l[s])
                                     : _mm512_permutex2var_ps(l[s], idx[s][kx], h[s]));
      _mm512_storeu_ps(out + kx * nr, v);
    }
  }
}

// Any kernel width and segment count: per channel and op two masked loads and per kernel column
// a permute and a masked store of the op's lanes.
void perm_ops(const float* image, const PanelGeometry& g, const PermPlan& plan, const PermOp* ops, int count,
              bool prefetch, std::int64_t nr, float* dst) {
  const __m512i step = _mm512_set1_epi32(static_cast<int>(g.dilation_w));
  const float* plane = image;
  for (std::int64_t c = 0; c < g.channels; ++c, plane += g.plane, dst += plan.stride) {
    if (prefetch && c + kPrefetchChannels < g.channels)
      prefetch_lines(plane + kPrefetchChannels * g.plane, plan.line, plan.lines);
    for (int i = 0; i < count; ++i) {
      const PermOp& op = ops[i];
      const float* src = plane + op.offset;
      const __m512 lo = _mm512_maskz_loadu_ps(op.lo, src);
      const __m512 hi = _mm512_maskz_loadu_ps(op.hi, src + 16);
      __m512i idx = _mm512_loadu_si512(plan.segment[op.segment].index);
      float* out = dst + op.dst;
      for (std::int64_t kx = 0; kx < g.kernel_w; ++kx) {
        _mm512_mask_storeu_ps(out, op.lanes, _mm512_permutex2var_ps(lo, idx, hi));
        idx = _mm512_add_epi32(idx, step);
        out += nr;
      }
    }
  }
}

using GroupFn = void (*)(const float*, const PanelGeometry&, const PermPlan&, const PermOp*, bool, std::int64_t,
                         float*);

// [segments - 1][narrow ones], up to kMaxGroup segments (perm_ops past that).
constexpr int kMaxGroup = 4;
template <int KW>
struct Groups {
  static constexpr GroupFn table[kMaxGroup][kMaxGroup + 1] = {
      {&perm_group<1, 0, KW>, &perm_group<1, 1, KW>, nullptr, nullptr, nullptr},
      {&perm_group<2, 0, KW>, &perm_group<2, 1, KW>, &perm_group<2, 2, KW>, nullptr, nullptr},
      {&perm_group<3, 0, KW>, &perm_group<3, 1, KW>, &perm_group<3, 2, KW>, &perm_group<3, 3, KW>, nullptr},
      {&perm_group<4, 0, KW>, &perm_group<4, 1, KW>, &perm_group<4, 2, KW>, &perm_group<4, 3, KW>,
       &perm_group<4, 4, KW>}};
};

template <int KW>
void perm_group_kw(const float* image, const PanelGeometry& g, const PermPlan& plan, const PermOp* ops, int count,
                   bool prefetch, std::int64_t nr, float* dst) {
  if (count > kMaxGroup) {
    perm_ops(image, g, plan, ops, count, prefetch, nr, dst);
    return;
  }
  int narrow = 0;
  while (narrow < count && ops[narrow].narrow) ++narrow;
  Groups<KW>::table[count - 1][narrow](image, g, plan, ops, prefetch, nr, dst);
}

// Group by group (a kernel row of a 16-lane vector), each over all channels: the group's window
// masks, offsets and permute indices stay in registers, and every packed vector is stored once.
// The input lines the plan reads are prefetched (all lines of the first kPrefetchChannels
// channels first, then kPrefetchChannels ahead in the first group): a channel's few rows may come
// from L3, in a pattern the hardware prefetchers do not follow.
void perm_pack(const float* image, const PanelGeometry& g, const PermPlan& plan, float* dst) {
  const std::int64_t nr = plan.stride / (g.kernel_h * g.kernel_w);
  for (std::int64_t c = 0; c < kPrefetchChannels && c < g.channels; ++c)
    prefetch_lines(image + c * g.plane, plan.line, plan.lines);
  for (int i = 0; i < plan.ops;) {
    int j = i + 1;
    while (j < plan.ops && plan.op[j].dst == plan.op[i].dst) ++j;
    const bool prefetch = i == 0;
    if (g.kernel_w == 3)
      perm_group_kw<3>(image, g, plan, plan.op + i, j - i, prefetch, nr, dst);
    else if (g.kernel_w == 1)
      perm_group_kw<1>(image, g, plan, plan.op + i, j - i, prefetch, nr, dst);
    else
      perm_ops(image, g, plan, plan.op + i, j - i, prefetch, nr, dst);
    i = j;
  }
}

}  // namespace

PerforatedKernels perforated_kernels_avx512() {
  return {&pack, &fill, &perm_pack, perforated_acc_tile_avx512(), perforated_acc_rows_avx512()};
}

}  // namespace onnxopt
