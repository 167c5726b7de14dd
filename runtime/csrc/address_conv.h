// AddressConv: a 1x1 (grouped, strided) convolution whose input channel k is source channel
// address[k].src read at displacement (address[k].dy, address[k].dx), zero outside the image.
//
// The kernel never materialises the shifted input: each work item (image, group, run of output
// positions) gathers its displaced, strided input straight into the packed GEMM panel and
// multiplies it with the packed weights.  This file is onnxruntime-free so it can be driven by
// the custom-op wrapper (address_conv_op.cc) or by anything else.
#pragma once

#include <cstdint>
#include <limits>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "aligned.h"
#include "gemm.h"

namespace onnxopt {

struct AddressConvShape {
  std::int64_t batch = 0, src_channels = 0, height = 0, width = 0;
  std::int64_t out_channels = 0, in_channels = 0, group = 1;
  std::int64_t stride_h = 1, stride_w = 1;
  std::int64_t out_height() const { return (height + stride_h - 1) / stride_h; }
  std::int64_t out_width() const { return (width + stride_w - 1) / stride_w; }
};

// Weights [Cout, Cin/group] packed into row blocks of the micro-kernel (see gemm.h), and on
// first use (small maps) also into the channel panels of ChannelGemm.
class PackedWeights {
 public:
  PackedWeights() = default;
  PackedWeights(const float* w, std::int64_t out_channels, std::int64_t k_per_group, std::int64_t group,
                const GemmIsa& isa);
  bool empty() const { return data_.empty(); }
  // The block of rows starting at `row` (a block start inside its group).
  const float* block(std::int64_t row) const { return data_.data() + row * k_; }
  // A group's rows are cut into blocks of at most mr rows, as equal as possible (64 = 11 + 11 +
  // 11 + 11 + 10 + 10 for mr = 12, not 5 * 12 + 4: no thin, slow remainder tile; a sum does not
  // depend on its tile's height).  In-group row m lies in a block of block_rows(m) rows starting at
  // block_start(m); snap(m) is the first block start at or after m (rows per group past the end).
  std::int64_t block_start(std::int64_t m) const { return start_[static_cast<std::size_t>(m)]; }
  std::int64_t block_rows(std::int64_t m) const { return rows_[static_cast<std::size_t>(m)]; }
  std::int64_t snap(std::int64_t m) const {
    if (m >= static_cast<std::int64_t>(start_.size())) return static_cast<std::int64_t>(start_.size());
    return block_start(m) == m ? m : block_start(m) + block_rows(m);
  }
  // Builds the channel panels once (thread-safe; from the row blocks, so W need not outlive us).
  void ensure_channel_panels(const ChannelGemm& ch) const;
  // The channel panel of group g holding its output channels [m, m + nw) (m a multiple of nw).
  const float* channel_panel(std::int64_t g, std::int64_t m) const;

 private:
  struct Channels {
    std::once_flag once;
    AlignedVector<float> data;
    std::int64_t nw = 0, per_group = 0;
  };
  AlignedVector<float> data_;
  std::vector<std::int64_t> start_, rows_;  // per in-group row
  std::int64_t k_ = 0, out_channels_ = 0, group_ = 1;
  std::shared_ptr<Channels> channels_;
};

// Runs `fn(i)` for i in [0, total), possibly concurrently.
using ParallelFor = std::function<void(std::size_t total, const std::function<void(std::size_t)>& fn)>;

// Empty string when the [rows, 3] table (src, dy, dx) is valid for X with `src_channels`
// channels, else what is wrong (for the error the op returns).  Any displacement is valid
// (reads outside the image are zero).
std::string validate_addresses(const std::int32_t* address, std::int64_t rows, std::int64_t src_channels);

// Whether row r of the [rows, 3] table reads channel r undisplaced, for every r: at stride 1 the
// conv is a plain 1x1 one and X's planes are the GEMM operand as they are (e.g. a plain conv next
// to shifted ones, kept as AddressConv so that the whole chain stays one op type).
bool identity_table(const std::int32_t* address, std::int64_t rows);

// What is fused after the conv: y = min(max(conv + bias + residual, clip_min), clip_max), applied
// to each tile in registers before its store (no second pass over y).  residual [N, Cout, Ho, Wo]
// or null; clip_min = -inf and clip_max = +inf clamp nothing (Relu: clip_min = 0).
struct AddressConvEpilogue {
  const float* residual = nullptr;
  float clip_min = -std::numeric_limits<float>::infinity();
  float clip_max = std::numeric_limits<float>::infinity();
  bool empty() const { return !residual && !clamps(clip_min, clip_max); }
};

// y [N, Cout, Ho, Wo] = AddressConv(x [N, Csrc, H, W], weights, bias [Cout] or null,
// address [Cin, 3]), then the epilogue.  The address table must have been validated.  `channel`
// (optional, e.g. gemm_channel_isa()) lets small maps use channel-vectorised tiles.
void address_conv(const AddressConvShape& shape, const float* x, const PackedWeights& weights,
                  const float* bias, const std::int32_t* address, float* y,
                  const GemmIsa& isa, const ParallelFor& parallel_for, const ChannelGemm* channel = nullptr,
                  const AddressConvEpilogue& epilogue = {});

}  // namespace onnxopt
