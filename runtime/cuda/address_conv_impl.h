// CUDA launchers of AddressConv's device work (address_conv_impl.cu).  Each enqueues on `stream`
// and returns the launch status; the host wrapper (address_conv_cuda.cc) checks it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace onnxopt::cuda {

// min(max(v, lo), hi) with a NaN kept (fminf / fmaxf would return the bound for a NaN, turning an
// unclamped NaN into -inf): the CPU kernels' semantics, and those of onnxruntime's Relu / Clip.
__host__ __device__ inline float clamp_keeping_nan(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

struct AddressGatherShape {
  std::int64_t batch = 0, src_channels = 0, height = 0, width = 0;  // X
  std::int64_t in_channels = 0;                                    // rows of address
  std::int64_t out_height = 0, out_width = 0, stride_h = 1, stride_w = 1;
};

// cols[n, k, i*Wo + j] = X[n, src[k], i*sh + dy[k], j*sw + dx[k]] (0 outside the image), for the
// device address table [Cin, 3] = (src, dy, dx): the GEMM operand B, [N, Cin, Ho*Wo].
// Needs Cin <= 65535 and batch <= 65535 (grid y and z).
cudaError_t address_conv_gather(cudaStream_t stream, const AddressGatherShape& s, const float* x,
                                const std::int32_t* address, float* cols);

// y[n, o, p] = min(max(y[n, o, p] + bias[o] + residual[n, o, p], lo), hi) in place, after the
// GEMM: the bias, the fused residual Add and the fused Relu / Clip in one pass (bias and residual
// may be null: they count as 0).
cudaError_t epilogue(cudaStream_t stream, const float* bias, const float* residual, std::int64_t batch,
                     std::int64_t channels, std::int64_t plane, float lo, float hi, float* y);

}  // namespace onnxopt::cuda
