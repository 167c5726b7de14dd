// CUDA launchers of PerforatedConv's device work (perforated_conv_impl.cu).  Each enqueues on
// `stream` and returns the launch status; the host wrapper (perforated_conv_cuda.cc) checks it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace onnxopt::cuda {

struct PerforatedGatherShape {
  std::int64_t batch = 0, in_channels = 0, height = 0, width = 0;  // X
  std::int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, dilation_h = 1, dilation_w = 1;
  std::int64_t pad_top = 0, pad_left = 0, out_width = 0;
  std::int64_t kept = 0;  // P, entries of positions
};

// im2row of the kept positions only, laid out as the GEMM operand B [N, Cin*kh*kw, P]:
// cols[n, (c*kh + ky)*kw + kx, p] = X[n, c, oy*sh - pt + ky*dh, ox*sw - pl + kx*dw] (0 outside),
// with (oy, ox) = (positions[p] / Wo, positions[p] % Wo).  Needs Cin, batch <= 65535.
cudaError_t perforated_conv_gather(cudaStream_t stream, const PerforatedGatherShape& s, const float* x,
                                   const std::int32_t* positions, float* cols);

// y[n, o, q] = clamp(kept[n, o, fill[q]] (+ bias[o]), lo, hi) for q in [0, plane): kept is
// [N, Cout, P]; lo = -inf and hi = +inf clamp nothing (a fused Relu / Clip otherwise).
cudaError_t perforated_conv_fill(cudaStream_t stream, const float* kept, const std::int32_t* fill, const float* bias,
                                 std::int64_t batch, std::int64_t channels, std::int64_t kept_count,
                                 std::int64_t plane, float lo, float hi, float* y);

}  // namespace onnxopt::cuda
