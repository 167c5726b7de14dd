// The blocked layout of AddressConv chains, and the kernels that work in it.
//
// Layout "NCHW16c, border 1": a tensor of C channels and H x W positions is stored as
// [N, ceil(C/16), H + 2, W + 2, 16]; element (n, c, y, x) lives at [n][c / 16][y + 1][x + 1][c % 16].
// The one-position border and the channels past C are zero, always (every writer keeps them so).
//
// Why: AddressConv in NCHW vectorises over positions and broadcasts weights, so its B rows are
// whole planes apart (4 KiB at 32x32: one L1 set for all of them) and a displaced read straddles
// cache lines.  Here the roles swap: a tile holds R output positions x F blocks of 16 output
// channels, and per input channel k it broadcasts R input values, each read at its own displaced
// position (src block, y + dy, x + dx, src lane): the zero border makes every displacement in
// [-1, 1] a plain load, with no masks and no packing, and a chain of these convs never leaves the
// layout (ToBlocked at its entry, FromBlocked at its exits, see runtime/ops.py).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "address_conv.h"  // ParallelFor
#include "aligned.h"
#include "gemm.h"

namespace onnxopt {

constexpr std::int64_t kBlock = 16;
inline std::int64_t blocks_of(std::int64_t channels) { return ceil_div(channels, kBlock); }

// x [N, C, H, W] -> y [N, ceil(C/16), H + 2, W + 2, 16] and back.
void to_blocked(const float* x, std::int64_t batch, std::int64_t channels, std::int64_t height, std::int64_t width,
                float* y, const GemmIsa& isa, const ParallelFor& parallel_for);
void from_blocked(const float* x, std::int64_t batch, std::int64_t channels, std::int64_t height, std::int64_t width,
                  float* y, const GemmIsa& isa, const ParallelFor& parallel_for);

// y [N, C, 1, 1] = the mean over H x W of blocked x [N, ceil(C/16), H + 2, W + 2, 16].
void blocked_global_average_pool(const float* x, std::int64_t batch, std::int64_t channels, std::int64_t height,
                                 std::int64_t width, float* y, const ParallelFor& parallel_for);

// W [Cout, K] as ceil(Cout/16) blocks of [K][16], output channels past Cout zero.
class BlockedWeights {
 public:
  BlockedWeights() = default;
  BlockedWeights(const float* w, std::int64_t out_channels, std::int64_t k);
  bool empty() const { return data_.empty(); }
  const float* block(std::int64_t b) const { return data_.data() + b * k_ * kBlock; }
  std::int64_t stride() const { return k_ * kBlock; }

 private:
  AlignedVector<float> data_;
  std::int64_t k_ = 0;
};

// Empty when every row (src, dy, dx) of the [k, 3] table reads a channel of the src_blocks *
// src_lanes stored ones at a displacement within the border (|dy|, |dx| <= 1), else what is wrong.
std::string validate_blocked_addresses(const std::int32_t* address, std::int64_t k, std::int64_t src_blocks,
                                       std::int64_t src_lanes = kBlock);

// How one blocked AddressConv walks an output row: channel groups x position runs of tiles, and
// per input channel the source row (dy + 1) and the offset within it (src / lanes * block stride
// + dx * lanes + src % lanes, lanes = src_lanes floats per cell) that it reads.  It depends on the shapes and the address table only, so kernels
// keep the last one (BlockedPlanCache).
struct BlockedRowPlan {
  struct Span {
    std::int64_t first;
    int count;
  };
  BlockedRowPlan(std::int64_t out_channels, const std::int32_t* address, std::int64_t k, std::int64_t out_width,
                 std::int64_t src_block_stride, std::int64_t src_lanes);
  bool made_for(std::int64_t out_channels, const std::int32_t* address, std::int64_t k, std::int64_t out_width,
                std::int64_t src_block_stride, std::int64_t src_lanes) const;

  std::int64_t out_channels, out_width, src_block_stride, src_lanes;
  std::vector<std::int32_t> address;
  std::vector<Span> groups, runs;
  std::vector<int> row_of;
  std::vector<std::int64_t> within;
  std::uint16_t tail_lanes;
};

// The last plan made, shared by concurrent runs.
class BlockedPlanCache {
 public:
  std::shared_ptr<const BlockedRowPlan> get(std::int64_t out_channels, const std::int32_t* address, std::int64_t k,
                                            std::int64_t out_width, std::int64_t src_block_stride,
                                            std::int64_t src_lanes);

 private:
  std::mutex mutex_;
  std::shared_ptr<const BlockedRowPlan> last_;
};

// One blocked AddressConv: W as packed blocks, bias padded to whole blocks (zeros past Cout), the
// [k, 3] address table (valid for its source, see validate_blocked_addresses), strides, clip, and
// where to keep its row plans (null: made for each call).
struct BlockedStage {
  const BlockedWeights* weights;
  const float* bias_padded;
  const std::int32_t* address;
  std::int64_t out_channels, k, stride_h, stride_w;
  float lo, hi;
  BlockedPlanCache* plans = nullptr;
};
// A blocked input X: [batch, src_blocks, height + 2, width + 2, lanes], border zero.  lanes is 16
// but for an image read by an entry conv (BlockedEntryConv): 1, i.e. NCHW with a zero border.
struct BlockedInput {
  std::int64_t batch = 0, src_blocks = 0, height = 0, width = 0, lanes = kBlock;
};

// y = min(max(AddressConv(x) + bias + residual, lo), hi), all blocked, y
// [N, ceil(Cout/16), ceil(H/sh) + 2, ceil(W/sw) + 2, 16]; residual (y's layout) may be null.
// Writes y's border and padding channels as zeros.
void blocked_address_conv(const BlockedInput& in, const float* x, const BlockedStage& conv, const float* residual,
                          float* y, const GemmIsa& isa, const ParallelFor& parallel_for);

class PolyphaseCache;

// y = second(first(x)) (+ residual, inside second's clip), both blocked AddressConvs as above.
// first's output lives in a ring of three rows per thread, each row computed once; where reading
// both convs' weights once per output row costs more (large weights, short rows: see
// whole_first_conv() in blocked_conv.cc) it is computed over the whole image into per-thread
// scratch first; where second is strided, only at the positions second reads, where a plan
// applies and the input's size fits it (a PolyphasePlan, blocked_polyphase.h, kept in
// `polyphase`: callers pass one only for constant stages; without one the pair takes the other
// paths, as making the plan per call costs more than it saves on small maps).  Bit-identical to
// the two convs one after the other each way.
void blocked_address_conv_pair(const BlockedInput& in, const float* x, const BlockedStage& first,
                               const BlockedStage& second, const float* residual, float* y, const GemmIsa& isa,
                               const ParallelFor& parallel_for, PolyphaseCache* polyphase = nullptr);

// y = min(max(AddressConv(x) + bias, lo), hi) blocked as above, from an NCHW x [N, C, H, W] whose
// channels the address table reads: x is copied with a zero border into per-thread scratch (a
// blocked tensor of lanes 1) instead of being blocked into 16-lane cells (a ShiftNet stem reads
// 3 channels: 3 of 16 lanes).  Bit-identical to ToBlocked + blocked_address_conv().
void blocked_entry_conv(const float* x, std::int64_t batch, std::int64_t channels, std::int64_t height,
                        std::int64_t width, const BlockedStage& conv, float* y, const GemmIsa& isa,
                        const ParallelFor& parallel_for);

// ---- per-ISA inner loops (blocked_avx512.cc) ----

// One tile: R output positions x F channel blocks.  See blocked_tile_avx512().
struct BlockedTile {
  int k;
  const float* const* src;     // per input channel: its read for the row's output position 0
  std::int64_t first;          // floats from those reads to the tile's first position's
  std::int64_t pos_stride;     // floats between consecutive positions' reads (lanes * stride_w)
  const float* w;              // F blocks of [k][16], w_stride apart
  std::int64_t w_stride;
  const float* bias;           // F * 16, or null: start from the partial sums in out (K chunks)
  const float* residual;       // like out, or null
  float* out;                  // the tile's first output position, block 0
  std::int64_t out_stride;     // floats between output channel blocks
  float lo, hi;
  std::uint16_t last_lanes;    // lanes of block F - 1 that are real channels
};
using BlockedTileFn = void (*)(const BlockedTile& t);
constexpr int kBlockedMaxF = 4;
// The most positions per tile for F blocks (24 accumulators, at most 12 positions).
constexpr int blocked_max_r(int f) { return f == 1 || f == 2 ? 12 : 24 / f; }
// Valid only where the CPU has AVX-512F; 1 <= f <= 4, 1 <= r <= blocked_max_r(f); for tiles of
// that pos_stride (compiled with it as a constant where it is 1, 16 or 32).
BlockedTileFn blocked_tile_avx512(int r, int f, std::int64_t pos_stride);
void to_blocked_row_avx512(const float* x, std::int64_t plane, std::int64_t channels, std::int64_t width, float* y);
void from_blocked_row_avx512(const float* x, std::int64_t plane, std::int64_t channels, std::int64_t width,
                             float* y);

}  // namespace onnxopt
