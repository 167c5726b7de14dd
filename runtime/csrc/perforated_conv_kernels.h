// The two memory-bound inner loops of PerforatedConv, per ISA (the AVX-512 versions live in
// perforated_conv_avx512.cc, compiled with -mavx512f and only called after the CPU check that
// chose the AVX-512 GEMM, see gemm.cc).
#pragma once

#include <cstdint>

namespace onnxopt {

// dst[q] = src[fill[q]] for q < count; may read up to 15 floats past the largest src[fill[q]].
using PerforatedFillFn = void (*)(const float* src, const std::int32_t* fill, std::int64_t count, float* dst);

// 16 consecutive output columns of one output row, some of them kept: the input position tap
// (0, 0) reads for the first of them (row iy, column ix; stride 1 along the row) and the bit
// mask of the kept ones.  A panel of kept positions that are increasing is a list of chunks.
struct PackChunk {
  std::int32_t iy;
  std::int32_t ix;
  std::uint32_t keep;
};

struct PanelGeometry {
  std::int64_t plane, channels, height, width, kernel_h, kernel_w, dilation_h, dilation_w;
};

// Gathers one packed B panel: for each of the g.channels channel planes (g.plane floats apart,
// from `image`) and each of the kernel's taps t, dst[nr] = plane[offsets[t * nr + j]] (0 where
// the offset is -1).  inside[t] is 1 where no offset of tap t is -1.
using PerforatedPackFn = void (*)(const float* image, const PanelGeometry& g, const std::int32_t* offsets,
                                  const std::uint8_t* inside, int nr, float* dst);

// Packs one panel from its chunks (row-wise loads compressed to the kept columns, no gathers);
// columns [nc, nr) of every row are zeroed.
using PerforatedChunkPackFn = void (*)(const float* image, const PanelGeometry& g, const PackChunk* chunks,
                                       int count, int nc, int nr, float* dst);

struct PerforatedKernels {
  PerforatedPackFn pack;
  PerforatedFillFn fill;
  PerforatedChunkPackFn chunk_pack;  // null where the ISA has no compress instruction
};

// Valid only where the CPU has AVX-512F; nr must be a multiple of 16.
PerforatedKernels perforated_kernels_avx512();

}  // namespace onnxopt
