// Packed single-precision GEMM micro-kernels with runtime ISA dispatch.
//
// The custom kernels compute C[m, n] = bias[m] + sum_k A[m, k] * B[k, n] with C row-major
// (NCHW output: n runs over output positions).  Both operands arrive packed:
//   A: blocks of `mr` rows, each stored k-major ([K][mr], mr <= Isa::mr);
//   B: panels of `Isa::nr` columns, each stored k-major ([K][nr]), zero-padded to nr.
// A tile computes mr x nc (nc <= nr) outputs and writes them with masked stores, so no
// padding of C is needed and row/column tails cost no wasted FMAs beyond one vector.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

namespace onnxopt {

// Computes one mr x nc tile: c[r * ldc + j] = (bias ? bias[r] : 0) + sum_k a[k * mr + r] * b[k * nr + j].
using TileFn = void (*)(int K, const float* a, int mr, const float* b, int nc, const float* bias,
                        float* c, std::ptrdiff_t ldc);

// What a tile does to its sums in registers, before its store (the *_ep entry points; TileFn and
// ChannelTileFn are these with no epilogue):
//   c = min(max(sum + residual, lo), hi)
// sum = bias + the products as above; residual (may be null) has c's layout, row stride ldr, and
// points at the tile's first output; a NaN sum stays NaN; lo = -inf, hi = +inf clamp nothing.
// Whether [lo, hi] clamps anything (a bound at infinity changes no number and no NaN).
inline bool clamps(float lo, float hi) {
  return lo > -std::numeric_limits<float>::infinity() || hi < std::numeric_limits<float>::infinity();
}

struct Epilogue {
  const float* residual;
  std::ptrdiff_t ldr;
  float lo, hi;
};

// b's rows are ldb apart (nr: a packed panel).  Where GemmIsa::direct_b is set, ldb may be anything
// and no b element past column nc is read (b can be an unpacked NCHW plane: ldb = H * W).
using TileEpFn = void (*)(int K, const float* a, int mr, const float* b, std::ptrdiff_t ldb, int nc,
                          const float* bias, float* c, std::ptrdiff_t ldc, const Epilogue* ep);

// A run of consecutive output positions on one output row, inside one packed panel.
struct PackRun {
  std::int32_t panel;   // panel index within the block
  std::int32_t offset;  // first column within the panel
  std::int32_t count;
  std::int32_t last;    // 1 on the panel's last run
  std::int64_t row;     // output row i
  std::int64_t col;     // output column j of the first position
};

// ceil(a / b) for a >= 0, b > 0.
inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Scratch PackRun entries a block of `cols` output positions needs.
inline std::int64_t pack_runs_capacity(std::int64_t cols, int nr) { return cols + ceil_div(cols, nr); }

// One work item's packing of AddressConv's GEMM input (see pack.h): for the k input channels of
// one group and output positions [p0, p0 + cols) of one image, packed[panel][kk][nr] =
// image[address[kk].src] at (i*stride_h + dy, j*stride_w + dx), zero outside the image.
struct PackJob {
  const float* image;            // [Csrc, height, width] of one image
  const std::int32_t* address;   // [k, 3] rows of this group
  std::int64_t k, height, width, out_width, stride_h, stride_w, p0, cols;
  int nr;
  float* packed;                 // ceil(cols / nr) panels of [k][nr]
  PackRun* runs;                 // scratch, pack_runs_capacity(cols, nr) entries
};

using PackFn = void (*)(const PackJob& job);

// Packs one panel of B for AddressConv with stride 1, where each B row is a displaced plane of X,
// zero outside the image: for output positions [p, p + nc) (p and nc multiples of 16, nc <= nr),
// dst[k * nr + j] = bit (p + j) of masks[k] ? rows[k][p + j] : 0, where masks[k] is a bitmap
// over the positions (16 per uint16) and rows[k] the displaced plane (only lanes whose bit is set
// are read).  Columns past nc are not written; dst is 64-byte aligned.
using GatherPackFn = void (*)(int K, const float* const* rows, const std::uint16_t* const* masks, std::int64_t p,
                              int nc, int nr, float* dst);

struct GemmIsa {
  const char* name;
  int mr;  // most rows of A in one tile
  int nr;  // columns of one packed B panel
  TileFn tile;
  PackFn pack;
  TileEpFn tile_ep;  // tile with an epilogue (ep may be null) and a row stride of b
  bool direct_b;     // tile_ep takes any ldb and reads nothing past column nc
  GatherPackFn gather_pack;  // or nullptr
};

// The best micro-kernel this CPU runs (AVX-512F, AVX2+FMA, or portable C++), chosen once.
const GemmIsa& gemm_isa();

// Channel-vectorised tiles, for GEMMs with few output positions (7x7 maps: 49 positions are
// 12 + 12 + 12 + 13 rows here, but 32 + 32 columns of a GemmIsa tile).  The roles swap: rows are
// output positions, broadcast from a packed B panel (GemmIsa layout, row stride ldb = the panel
// width), columns are output channels, vectors of weights packed in panels of `nw` channels
// k-major ([K][nw], zero-padded).  A tile computes rows x nch (nch <= nw) outputs:
//   c[ch * ldc + r] = (bias ? bias[ch] : 0) + sum_k w[k * nw + ch] * b[k * ldb + r].
using ChannelTileFn = void (*)(int K, const float* w, int nch, const float* b, std::ptrdiff_t ldb, int rows,
                               const float* bias, float* c, std::ptrdiff_t ldc);
// The same with an epilogue (see Epilogue; residual in c's layout: channel ch at residual + ch * ldr).
using ChannelTileEpFn = void (*)(int K, const float* w, int nch, const float* b, std::ptrdiff_t ldb, int rows,
                                 const float* bias, float* c, std::ptrdiff_t ldc, const Epilogue* ep);

struct ChannelGemm {
  const char* name;
  int rows;  // most output positions in one tile
  int nw;    // channels of one packed weight panel
  ChannelTileFn tile;
  ChannelTileEpFn tile_ep;
};

// The channel-vectorised tiles that go with gemm_isa(), or nullptr where it has none.
const ChannelGemm* gemm_channel_isa();
const ChannelGemm& gemm_channel_avx512();

// Per-ISA entry points (defined in gemm_<isa>.cc, each compiled with its own -m flags).
const GemmIsa& gemm_isa_avx512();
const GemmIsa& gemm_isa_avx2();
const GemmIsa& gemm_isa_generic();

}  // namespace onnxopt
