#include "address_conv_impl.h"

namespace onnxopt::cuda {
namespace {

constexpr int kThreads = 256;

// grid: x over output positions, y = input channel k, z = image.
__global__ void address_gather_kernel(const float* __restrict__ x, const int* __restrict__ address,
                                      float* __restrict__ cols, int src_channels, int height, int width,
                                      int in_channels, int out_width, int plane, int stride_h, int stride_w) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= plane) return;
  const int k = blockIdx.y, n = blockIdx.z;
  const int src = address[3 * k], dy = address[3 * k + 1], dx = address[3 * k + 2];
  const int i = p / out_width, j = p - i * out_width;
  const int yy = i * stride_h + dy, xx = j * stride_w + dx;
  float v = 0.0f;
  if (yy >= 0 && yy < height && xx >= 0 && xx < width)
    v = x[(static_cast<long long>(n) * src_channels + src) * height * width + static_cast<long long>(yy) * width + xx];
  cols[(static_cast<long long>(n) * in_channels + k) * plane + p] = v;
}

// grid: x over positions, y = channel, z = image.  y = clamp(y + bias[o] + residual, lo, hi);
// bias and residual may be null.
__global__ void epilogue_kernel(const float* __restrict__ bias, const float* __restrict__ residual,
                                float* __restrict__ y, int channels, int plane, float lo, float hi) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= plane) return;
  const int o = blockIdx.y, n = blockIdx.z;
  const long long i = (static_cast<long long>(n) * channels + o) * plane + p;
  float v = y[i];
  if (bias) v += bias[o];
  if (residual) v += residual[i];
  y[i] = clamp_keeping_nan(v, lo, hi);
}

bool grid_fits(std::int64_t x_blocks, std::int64_t y, std::int64_t z) {
  return x_blocks <= 0x7fffffff && y <= 65535 && z <= 65535 && x_blocks > 0 && y > 0 && z > 0;
}

}  // namespace

cudaError_t address_conv_gather(cudaStream_t stream, const AddressGatherShape& s, const float* x,
                                const std::int32_t* address, float* cols) {
  const std::int64_t plane = s.out_height * s.out_width;
  const std::int64_t blocks = (plane + kThreads - 1) / kThreads;
  if (s.batch == 0 || s.in_channels == 0) return cudaSuccess;
  if (!grid_fits(blocks, s.in_channels, s.batch) || s.src_channels * s.height * s.width > 0x7fffffff)
    return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(s.in_channels), static_cast<unsigned>(s.batch));
  address_gather_kernel<<<grid, kThreads, 0, stream>>>(
      x, address, cols, static_cast<int>(s.src_channels), static_cast<int>(s.height), static_cast<int>(s.width),
      static_cast<int>(s.in_channels), static_cast<int>(s.out_width), static_cast<int>(plane),
      static_cast<int>(s.stride_h), static_cast<int>(s.stride_w));
  return cudaGetLastError();
}

cudaError_t epilogue(cudaStream_t stream, const float* bias, const float* residual, std::int64_t batch,
                     std::int64_t channels, std::int64_t plane, float lo, float hi, float* y) {
  const std::int64_t blocks = (plane + kThreads - 1) / kThreads;
  if (batch == 0) return cudaSuccess;
  if (!grid_fits(blocks, channels, batch)) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(channels), static_cast<unsigned>(batch));
  epilogue_kernel<<<grid, kThreads, 0, stream>>>(bias, residual, y, static_cast<int>(channels),
                                                 static_cast<int>(plane), lo, hi);
  return cudaGetLastError();
}

}  // namespace onnxopt::cuda
