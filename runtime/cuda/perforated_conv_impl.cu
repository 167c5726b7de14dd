#include "perforated_conv_impl.h"

#include "address_conv_impl.h"  // clamp_keeping_nan

namespace onnxopt::cuda {
namespace {

constexpr int kThreads = 256;

// grid: x over kept positions, y = input channel, z = image; each thread writes the kh*kw taps of
// its (channel, position), consecutive threads consecutive positions (coalesced stores).
__global__ void perforated_gather_kernel(const float* __restrict__ x, const int* __restrict__ positions,
                                         float* __restrict__ cols, int in_channels, int height, int width,
                                         int kernel_h, int kernel_w, int stride_h, int stride_w, int dilation_h,
                                         int dilation_w, int pad_top, int pad_left, int out_width, int kept) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= kept) return;
  const int c = blockIdx.y, n = blockIdx.z;
  const int pos = positions[p];
  const int oy = pos / out_width, ox = pos - oy * out_width;
  const int y0 = oy * stride_h - pad_top, x0 = ox * stride_w - pad_left;
  const float* plane = x + (static_cast<long long>(n) * in_channels + c) * height * width;
  const int taps = kernel_h * kernel_w;
  float* out = cols + (static_cast<long long>(n) * in_channels + c) * taps * kept + p;
  for (int ky = 0; ky < kernel_h; ++ky) {
    const int yy = y0 + ky * dilation_h;
    const bool row_inside = yy >= 0 && yy < height;
    for (int kx = 0; kx < kernel_w; ++kx) {
      const int xx = x0 + kx * dilation_w;
      const float v = row_inside && xx >= 0 && xx < width ? plane[yy * width + xx] : 0.0f;
      out[static_cast<long long>(ky * kernel_w + kx) * kept] = v;
    }
  }
}

// grid: x over output positions, y = output channel, z = image.
__global__ void perforated_fill_kernel(const float* __restrict__ kept, const int* __restrict__ fill,
                                       const float* __restrict__ bias, float* __restrict__ y, int channels,
                                       int kept_count, int plane, float lo, float hi) {
  const int q = blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= plane) return;
  const int o = blockIdx.y, n = blockIdx.z;
  const long long row = static_cast<long long>(n) * channels + o;
  float v = kept[row * kept_count + fill[q]];
  if (bias) v += bias[o];
  y[row * plane + q] = clamp_keeping_nan(v, lo, hi);
}

bool grid_fits(std::int64_t x_blocks, std::int64_t y, std::int64_t z) {
  return x_blocks > 0 && x_blocks <= 0x7fffffff && y > 0 && y <= 65535 && z > 0 && z <= 65535;
}

}  // namespace

cudaError_t perforated_conv_gather(cudaStream_t stream, const PerforatedGatherShape& s, const float* x,
                                   const std::int32_t* positions, float* cols) {
  if (s.batch == 0 || s.in_channels == 0) return cudaSuccess;
  const std::int64_t blocks = (s.kept + kThreads - 1) / kThreads;
  if (!grid_fits(blocks, s.in_channels, s.batch) || s.in_channels * s.height * s.width > 0x7fffffff ||
      s.kernel_h * s.kernel_w * s.kept > 0x7fffffff)
    return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(s.in_channels), static_cast<unsigned>(s.batch));
  perforated_gather_kernel<<<grid, kThreads, 0, stream>>>(
      x, positions, cols, static_cast<int>(s.in_channels), static_cast<int>(s.height), static_cast<int>(s.width),
      static_cast<int>(s.kernel_h), static_cast<int>(s.kernel_w), static_cast<int>(s.stride_h),
      static_cast<int>(s.stride_w), static_cast<int>(s.dilation_h), static_cast<int>(s.dilation_w),
      static_cast<int>(s.pad_top), static_cast<int>(s.pad_left), static_cast<int>(s.out_width),
      static_cast<int>(s.kept));
  return cudaGetLastError();
}

cudaError_t perforated_conv_fill(cudaStream_t stream, const float* kept, const std::int32_t* fill, const float* bias,
                                 std::int64_t batch, std::int64_t channels, std::int64_t kept_count,
                                 std::int64_t plane, float lo, float hi, float* y) {
  if (batch == 0) return cudaSuccess;
  const std::int64_t blocks = (plane + kThreads - 1) / kThreads;
  if (!grid_fits(blocks, channels, batch)) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(channels), static_cast<unsigned>(batch));
  perforated_fill_kernel<<<grid, kThreads, 0, stream>>>(kept, fill, bias, y, static_cast<int>(channels),
                                                        static_cast<int>(kept_count), static_cast<int>(plane), lo,
                                                        hi);
  return cudaGetLastError();
}

}  // namespace onnxopt::cuda
