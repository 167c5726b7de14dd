// AddressConv: a 1x1 (grouped, strided) convolution whose input channel k is source channel
// address[k].src read at displacement (address[k].dy, address[k].dx), zero outside the image.
//
// The kernel never materialises the shifted input: each work item (image, group, run of output
// positions) gathers its displaced, strided input straight into the packed GEMM panel and
// multiplies it with the packed weights.  This file is onnxruntime-free so it can be driven by
// the custom-op wrapper (address_conv_op.cc) or by anything else.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "gemm.h"

namespace onnxopt {

struct Address {
  std::int64_t src;
  std::int64_t dy;
  std::int64_t dx;
};

struct AddressConvShape {
  std::int64_t batch = 0, src_channels = 0, height = 0, width = 0;
  std::int64_t out_channels = 0, in_channels = 0, group = 1;
  std::int64_t stride_h = 1, stride_w = 1;
  std::int64_t out_height() const { return (height + stride_h - 1) / stride_h; }
  std::int64_t out_width() const { return (width + stride_w - 1) / stride_w; }
};

// Weights [Cout, Cin/group] packed into row blocks of the micro-kernel (see gemm.h).
class PackedWeights {
 public:
  PackedWeights() = default;
  PackedWeights(const float* w, std::int64_t out_channels, std::int64_t k_per_group, std::int64_t group,
                const GemmIsa& isa);
  bool empty() const { return data_.empty(); }
  // The block of rows starting at `row` (a block start inside its group).
  const float* block(std::int64_t row) const { return data_.data() + row * k_; }

 private:
  std::vector<float> data_;
  std::int64_t k_ = 0;
};

// Runs `fn(i)` for i in [0, total), possibly concurrently.
using ParallelFor = std::function<void(std::size_t total, const std::function<void(std::size_t)>& fn)>;

// Empty string when valid, else what is wrong (for the error the op returns).
std::string validate_addresses(const std::vector<Address>& address, std::int64_t src_channels);

void address_conv(const AddressConvShape& shape, const float* x, const PackedWeights& weights,
                  const float* bias, const std::vector<Address>& address, float* y,
                  const GemmIsa& isa, const ParallelFor& parallel_for);

}  // namespace onnxopt
