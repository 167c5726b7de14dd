// The two memory-bound inner loops of PerforatedConv, per ISA (the AVX-512 versions live in
// perforated_conv_avx512.cc, compiled with -mavx512f and only called after the CPU check that
// chose the AVX-512 GEMM, see gemm.cc).
#pragma once

#include <cstdint>

namespace onnxopt {

// Gathers one packed B panel: for each of `channels` channel planes (`plane` floats apart, from
// `image`) and each of `taps` taps, dst[nr] = plane[offsets[t * nr + j]] (0 where the offset is -1).
using PerforatedPackFn = void (*)(const float* image, std::int64_t plane, std::int64_t channels,
                                  std::int64_t taps, const std::int32_t* offsets, int nr, float* dst);
// dst[q] = src[fill[q]] for q < count.
using PerforatedFillFn = void (*)(const float* src, const std::int32_t* fill, std::int64_t count, float* dst);

struct PerforatedKernels {
  PerforatedPackFn pack;
  PerforatedFillFn fill;
};

// Valid only where the CPU has AVX-512F; nr must be a multiple of 16.
PerforatedKernels perforated_kernels_avx512();

}  // namespace onnxopt
