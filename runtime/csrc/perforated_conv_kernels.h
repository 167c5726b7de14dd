// The per-ISA inner loops of PerforatedConv: packing, fill and the K-block tiles (the AVX-512
// versions live in perforated_conv_avx512.cc and perforated_tiles_avx512.cc, compiled with
// -mavx512f and only called after the CPU check that chose the AVX-512 GEMM, see gemm.cc).
#pragma once

#include <cstddef>
#include <cstdint>

namespace onnxopt {

// How the fill takes one full 16-output vector of a row, worked out once per mask (the same for
// every row): lanes in mask[w] take src[start[w] + offset[lane]] (offset < 32), w < windows; with
// windows == 0 (sources spread over more than kMaxFillWindows windows of 32 floats) a gather.
constexpr int kMaxFillWindows = 4;
struct FillVector {
  std::int32_t offset[16];
  std::int32_t start[kMaxFillWindows];
  std::uint16_t mask[kMaxFillWindows];
  std::int32_t windows;
};

// dst[q] = src[fill[q]] for q < count; `vectors` (one per full 16 outputs, or null) as above.
// May read up to 31 floats past the largest src[fill[q]].
using PerforatedFillFn = void (*)(const float* src, const std::int32_t* fill, const FillVector* vectors,
                                  std::int64_t count, float* dst);

struct PanelGeometry {
  std::int64_t plane, channels, height, width, kernel_h, kernel_w, dilation_h, dilation_w;
};

// Gathers one packed B panel: for each of the g.channels channel planes (g.plane floats apart,
// from `image`) and each of the kernel's taps t, dst[nr] = plane[offsets[t * nr + j]] (0 where
// the offset is -1).  inside[t] is 1 where no offset of tap t is -1.
using PerforatedPackFn = void (*)(const float* image, const PanelGeometry& g, const std::int32_t* offsets,
                                  const std::uint8_t* inside, int nr, float* dst);

// A group of lanes of one 16-lane vector of a panel whose values, for every tap, lie in one
// window of 32 consecutive floats of one input row: kernel row ky reads the window at row
// iy + ky * dilation_h from column ix on, and for kernel column kx lane l takes
// window[index[l] + kx * dilation_w] (so index + (kernel_w - 1) * dilation_w < 32).  A panel of
// kept positions that cluster on a few output rows is a short list of these: per channel and
// kernel row two loads per segment, then a permute per tap, no gathers.
struct PermSegment {
  std::int32_t iy, ix;
  std::uint16_t lanes;   // lanes of the vector this segment fills
  std::uint16_t vector;  // which 16-lane vector of the panel
  std::int32_t index[16];
};

// A panel's segments worked out for every tap (rows inside the image, column masks at the
// image's edges where a masked load gives the zero padding) and the input lines they read, built
// once per mask and geometry (perforated_conv.cc: PerforatedPlan, cached across runs); then every
// K block of channels is packed from it.
constexpr int kMaxPermLines = 64;
struct PermOp {  // one segment and kernel row
  std::int32_t offset;  // window start in the channel plane
  std::int32_t dst;     // from the channel's first packed row: (ky * kernel_w) * nr + 16 * vector
  std::uint16_t lanes, lo, hi;  // lanes stored; load masks of the window's two halves
  std::uint16_t segment;        // into PermPlan::segment
  // 1: every tap's index is below 16, so the window's first half is all it reads (one load and a
  // one-table vpermps, hi == 0).  A group's narrow ops come first.
  std::uint16_t narrow;
};
struct PermPlan {  // a view of one panel's part of the plan's arrays
  const PermOp* op = nullptr;
  int ops = 0, lines = 0;
  const std::int64_t* line = nullptr;  // float offsets of the input lines read, from the channel plane
  const PermSegment* segment = nullptr;
  std::int64_t stride = 0;  // packed floats per channel (taps x nr)
};

// Packs g.channels channel planes (from `image`) of one panel: dst[c][tap][nr].
using PerforatedPermPackFn = void (*)(const float* image, const PanelGeometry& g, const PermPlan& plan,
                                      float* dst);

// One K block of a tile of the GEMM: c[r * ldc + j] (j < nc <= 32, r < mr <= 12) =
// (load ? c[r * ldc + j] : bias ? bias[r] : 0) + sum_k a[k * mr + r] * b[k * 32 + j].
using PerforatedAccTileFn = void (*)(int K, const float* a, int mr, const float* b, int nc, const float* bias,
                                     bool load, float* c, std::ptrdiff_t ldc);

// One row block of the weights a panel's tiles run over: its packed rows (K block k0 starts at
// a + k0 * mr), its bias (or null) and its first output row in c.
struct TileRow {
  const float* a;
  const float* bias;
  std::ptrdiff_t c;
  int mr;
};
// All of a panel's tiles of one K block, row block after row block: acc_tile(K, rows[i].a + k0 *
// rows[i].mr, rows[i].mr, b, nc, rows[i].bias, load, c + rows[i].c, ldc) for i < n.
// next_k0: the K block offset of the next call's first row block (its weights are prefetched
// during the last tile), or -1.
using PerforatedAccRowsFn = void (*)(int K, std::ptrdiff_t k0, const TileRow* rows, int n, const float* b, int nc,
                                     bool load, float* c, std::ptrdiff_t ldc, std::ptrdiff_t next_k0);

struct PerforatedKernels {
  PerforatedPackFn pack;
  PerforatedFillFn fill;
  PerforatedPermPackFn perm_pack;  // null where the ISA has no two-table permute
  PerforatedAccTileFn acc_tile;    // 12 x 32 K-block tiles; null: one K block with GemmIsa::tile
  PerforatedAccRowsFn acc_rows;    // acc_tile over a panel's row blocks (null where acc_tile is)
};

// Valid only where the CPU has AVX-512F; nr must be a multiple of 16.
PerforatedKernels perforated_kernels_avx512();
PerforatedAccTileFn perforated_acc_tile_avx512();
PerforatedAccRowsFn perforated_acc_rows_avx512();

}  // namespace onnxopt
