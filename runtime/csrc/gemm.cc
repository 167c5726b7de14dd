// Portable micro-kernel and the runtime choice between the ISA-specific ones.
#include <cstdlib>
#include <cstring>

#include "gemm.h"
#include "pack.h"

namespace onnxopt {
namespace {

constexpr int kMR = 4;
constexpr int kNR = 16;

void tile_generic_ep(int K, const float* a, int mr, const float* b, std::ptrdiff_t ldb, int nc, const float* bias,
                     float* c, std::ptrdiff_t ldc, const Epilogue* ep) {
  float acc[kMR][kNR];
  for (int r = 0; r < mr; ++r)
    for (int j = 0; j < kNR; ++j) acc[r][j] = bias ? bias[r] : 0.0f;
  for (int k = 0; k < K; ++k) {
    for (int r = 0; r < mr; ++r) {
      const float ar = a[r];
      for (int j = 0; j < kNR; ++j) acc[r][j] += ar * b[j];
    }
    a += mr;
    b += ldb;
  }
  if (ep) {
    for (int r = 0; r < mr; ++r) {
      for (int j = 0; j < nc; ++j) {
        float v = acc[r][j];
        if (ep->residual) v += ep->residual[r * ep->ldr + j];
        v = v < ep->lo ? ep->lo : v;  // NaN stays NaN
        acc[r][j] = v > ep->hi ? ep->hi : v;
      }
    }
  }
  for (int r = 0; r < mr; ++r) std::memcpy(c + r * ldc, acc[r], sizeof(float) * static_cast<std::size_t>(nc));
}

void tile_generic(int K, const float* a, int mr, const float* b, int nc, const float* bias, float* c,
                  std::ptrdiff_t ldc) {
  tile_generic_ep(K, a, mr, b, kNR, nc, bias, c, ldc, nullptr);
}

void pack_generic(const PackJob& job) {
  pack_block(job, [](float* dst, const float* src, int n, int lo, int hi) {
    for (int t = 0; t < lo; ++t) dst[t] = 0.0f;
    for (int t = lo; t < hi; ++t) dst[t] = src[t];
    for (int t = hi; t < n; ++t) dst[t] = 0.0f;
  });
}

const GemmIsa& choose() {
  // ONNXOPT_GEMM_ISA=avx2|generic forces a lesser kernel (tests and benchmarks); it never
  // selects one the CPU lacks.
  const char* force = std::getenv("ONNXOPT_GEMM_ISA");
  const bool want_avx512 = !force || std::strcmp(force, "avx512f") == 0;
  const bool want_avx2 = want_avx512 || std::strcmp(force, "avx2") == 0;
  (void)want_avx2;
#if defined(ONNXOPT_X86_KERNELS)
  __builtin_cpu_init();
  if (want_avx512 && __builtin_cpu_supports("avx512f")) return gemm_isa_avx512();
  if (want_avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return gemm_isa_avx2();
#endif
  return gemm_isa_generic();
}

}  // namespace

const GemmIsa& gemm_isa_generic() {
  static const GemmIsa isa{"generic", kMR, kNR, &tile_generic, &pack_generic, &tile_generic_ep, false, nullptr};
  return isa;
}

const GemmIsa& gemm_isa() {
  static const GemmIsa& isa = choose();
  return isa;
}

const ChannelGemm* gemm_channel_isa() {
#if defined(ONNXOPT_X86_KERNELS)
  static const ChannelGemm* isa = &gemm_isa() == &gemm_isa_avx512() ? &gemm_channel_avx512() : nullptr;
  return isa;
#else
  return nullptr;
#endif
}

}  // namespace onnxopt
