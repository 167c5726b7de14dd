// AVX-512F gathers for PerforatedConv's packing and fill (see perforated_conv_kernels.h).
// No std:: templates in this file: an out-of-line copy compiled with -mavx512f could be picked by
// the linker for code that runs on CPUs without AVX-512.
#include <immintrin.h>

#include "perforated_conv_kernels.h"

namespace onnxopt {
namespace {

constexpr int kMaxLanes = 4;  // nr <= 64

void pack(const float* image, std::int64_t plane, std::int64_t channels, std::int64_t taps,
          const std::int32_t* offsets, int nr, float* dst) {
  const int lanes = nr / 16;
  const __m512i zero_i = _mm512_setzero_si512();
  const __m512 zero = _mm512_setzero_ps();
  for (std::int64_t c = 0; c < channels; ++c) {
    const float* src = image + c * plane;
    const std::int32_t* off = offsets;
    for (std::int64_t t = 0; t < taps; ++t) {
      for (int v = 0; v < lanes && v < kMaxLanes; ++v) {
        const __m512i idx = _mm512_loadu_si512(off + 16 * v);
        const __mmask16 inside = _mm512_cmpge_epi32_mask(idx, zero_i);
        _mm512_storeu_ps(dst + 16 * v, _mm512_mask_i32gather_ps(zero, inside, idx, src, 4));
      }
      off += nr;
      dst += nr;
    }
  }
}

void fill(const float* src, const std::int32_t* index, std::int64_t count, float* dst) {
  std::int64_t q = 0;
  for (; q + 16 <= count; q += 16)
    _mm512_storeu_ps(dst + q, _mm512_i32gather_ps(_mm512_loadu_si512(index + q), src, 4));
  if (q < count) {
    const __mmask16 m = static_cast<__mmask16>((1u << (count - q)) - 1u);
    const __m512i idx = _mm512_maskz_loadu_epi32(m, index + q);
    _mm512_mask_storeu_ps(dst + q, m, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, src, 4));
  }
}

}  // namespace

PerforatedKernels perforated_kernels_avx512() { return {&pack, &fill}; }

}  // namespace onnxopt
