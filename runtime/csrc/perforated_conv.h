// PerforatedConv: a 2-D convolution (any kernel, stride, dilation, padding, group) evaluated
// only at the kept output positions `positions` (indices into the flattened Ho*Wo plane); every
// output position q then takes the value computed at positions[fill[q]].
//
// Per work item (image, group, block of kept positions, share of the output channels) the kernel
// gathers the im2row rows of just those positions straight into the micro-kernel's packed B
// panels ([K][nr], K = Cin/group * kh * kw, k = (c * kh + ky) * kw + kx like W's layout), runs
// packed tiles against the packed weights into a compact [N, Cout, P] buffer, and a second
// parallel pass scatters that buffer to [N, Cout, Ho, Wo] through `fill`.  No full-size im2col
// buffer and no dense output are ever built.  With AVX-512 the GEMM is K-blocked (per K block of
// up to ~2304 k, all channels of a 3x3 256-channel conv, and per panel: pack into L2, then every
// row block of the weights over it, accumulating into the compact buffer) and panels whose positions cluster on a few output rows
// are packed from row windows with permutes (perforated_conv_kernels.h: PermSegment); other
// panels, and other ISAs, gather.  onnxruntime-free, like address_conv.h.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>

#include "address_conv.h"  // PackedWeights, ParallelFor
#include "gemm.h"

namespace onnxopt {

struct PerforatedConvShape {
  std::int64_t batch = 0, in_channels = 0, height = 0, width = 0;
  std::int64_t out_channels = 0, group = 1;
  std::int64_t kernel_h = 1, kernel_w = 1;
  std::int64_t stride_h = 1, stride_w = 1, dilation_h = 1, dilation_w = 1;
  std::int64_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  std::int64_t out_height() const {
    return (height + pad_top + pad_bottom - dilation_h * (kernel_h - 1) - 1) / stride_h + 1;
  }
  std::int64_t out_width() const {
    return (width + pad_left + pad_right - dilation_w * (kernel_w - 1) - 1) / stride_w + 1;
  }
  std::int64_t k_per_group() const { return in_channels / group * kernel_h * kernel_w; }
};

// Empty string when `positions` ([count] entries) and `fill` ([plane] entries) are a valid mask
// for an output plane of `plane` positions, else what is wrong (for the error the op returns).
std::string validate_mask(const std::int32_t* positions, std::int64_t count, const std::int32_t* fill,
                          std::int64_t plane);

// How one mask is evaluated on one geometry: the mask's own copy, whether it is the identity,
// and per panel of isa.nr kept positions the packing plan (row-window permutes or gather
// offsets).  Depends on the spatial geometry (H, W, kernel, strides, dilations, pads), nr and the
// mask's contents only, not on the batch or the channels; immutable once built.
struct PerforatedPlan;

// A plan for `positions` / `fill`, which must be a valid mask (validate_mask) for the shape's output plane.
std::shared_ptr<const PerforatedPlan> make_perforated_plan(const PerforatedConvShape& shape,
                                                           const std::int32_t* positions, std::int64_t count,
                                                           const std::int32_t* fill, const GemmIsa& isa);

// The plan of the last mask seen (one per kernel instance): reused while the geometry and the
// contents of positions and fill are the same (compared in full on every call, so masks that are
// graph inputs and change between runs get a new plan), else the mask is validated and a new plan
// built.  Thread-safe (concurrent runs share the immutable plan).
class PerforatedPlanCache {
 public:
  // The plan, or null with `error` set (validate_mask's message) when the mask is invalid.
  std::shared_ptr<const PerforatedPlan> get(const PerforatedConvShape& shape, const std::int32_t* positions,
                                            std::int64_t count, const std::int32_t* fill, const GemmIsa& isa,
                                            std::string* error);

 private:
  std::mutex mutex_;
  std::shared_ptr<const PerforatedPlan> last_;
};

// y [N, Cout, Ho, Wo] = PerforatedConv(x [N, Cin, H, W], weights [Cout, K] packed, bias [Cout] or
// null) at the plan's mask (made for this shape's geometry and isa.nr), then clamped to
// [clip_min, clip_max] (a fused Relu / Clip; the defaults clamp nothing and NaN stays NaN).  The
// clamp is applied to each output row right after the fill wrote it (still in L1); a mask that
// keeps every position in order has no fill, and the clamp is a pass over y's rows.
void perforated_conv(const PerforatedConvShape& shape, const float* x, const PackedWeights& weights,
                     const float* bias, const PerforatedPlan& plan, float* y, const GemmIsa& isa,
                     const ParallelFor& parallel_for, float clip_min = -std::numeric_limits<float>::infinity(),
                     float clip_max = std::numeric_limits<float>::infinity());

// The same with the plan built for this call (positions [P], fill [Ho*Wo]; the mask must have
// been validated for Ho*Wo).
void perforated_conv(const PerforatedConvShape& shape, const float* x, const PackedWeights& weights,
                     const float* bias, const std::int32_t* positions, std::int64_t count,
                     const std::int32_t* fill, float* y, const GemmIsa& isa, const ParallelFor& parallel_for);

}  // namespace onnxopt
