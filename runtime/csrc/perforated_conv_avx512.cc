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

// Sixteen outputs usually take their values from fewer than sixteen consecutive kept positions
// (neighbours share them): one load and a permute then replace the gather.  Reads up to 15
// floats past src[count - 1] (the caller's buffer has that slack).
void fill(const float* src, const std::int32_t* index, std::int64_t count, float* dst) {
  std::int64_t q = 0;
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
  if (q < count) {
    const __mmask16 m = static_cast<__mmask16>((1u << (count - q)) - 1u);
    const __m512i idx = _mm512_maskz_loadu_epi32(m, index + q);
    _mm512_mask_storeu_ps(dst + q, m, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, src, 4));
  }
}

constexpr int kPrefetchChannels = 4;

// Per channel, each op (a segment and a kernel row) is two masked loads of its 32-float window
// and, per kernel column, a permute (the index moved by the dilation) and a masked store of the
// segment's lanes: no data-dependent branches, and the window is loaded once for all kernel
// columns (the loads, not the permutes, bound this loop).  Lanes that no segment fills (columns
// >= nc of the last panel) keep whatever the buffer held: the tiles never store those columns.
// The input lines the plan reads are prefetched kPrefetchChannels channel planes ahead (a
// channel's few rows may come from L3, in a pattern the hardware prefetchers do not follow).
void perm_pack(const float* image, const PanelGeometry& g, const PermPlan& plan, float* dst) {
  const __m512i step = _mm512_set1_epi32(static_cast<int>(g.dilation_w));
  const std::int64_t nr = plan.stride / (g.kernel_h * g.kernel_w);
  // The first channels' lines, all at once (their loads then overlap), then kPrefetchChannels ahead.
  for (std::int64_t c = 0; c < kPrefetchChannels && c < g.channels; ++c) {
    const float* plane = image + c * g.plane;
    for (int j = 0; j < plan.lines; ++j) _mm_prefetch(reinterpret_cast<const char*>(plane + plan.line[j]), _MM_HINT_T0);
  }
  for (std::int64_t c = 0; c < g.channels; ++c) {
    const float* plane = image + c * g.plane;
    if (c + kPrefetchChannels < g.channels) {
      const float* ahead = plane + kPrefetchChannels * g.plane;
      for (int j = 0; j < plan.lines; ++j) _mm_prefetch(reinterpret_cast<const char*>(ahead + plan.line[j]), _MM_HINT_T0);
    }
    for (int i = 0; i < plan.ops; ++i) {
      const PermOp& op = plan.op[i];
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
    dst += plan.stride;
  }
}

}  // namespace

PerforatedKernels perforated_kernels_avx512() {
  return {&pack, &fill, &perm_pack, perforated_acc_tile_avx512()};
}

}  // namespace onnxopt
