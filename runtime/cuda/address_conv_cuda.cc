#include "address_conv_cuda.h"

#include <algorithm>
#include <string>
#include <vector>

#include "address_conv.h"
#include "address_conv_impl.h"

namespace onnxopt::cuda {
namespace {

constexpr std::size_t kX = 0, kW = 1, kB = 2, kAddress = 3;

[[noreturn]] void fail(const std::string& what) { bad_input(what); }

}  // namespace

AddressConvCudaKernel::AddressConvCudaKernel(const OrtApi& api, const OrtKernelInfo* info) : api_(api) {
  group_ = int_attr(api, info, "group", 1);
  std::vector<std::int64_t> strides = ints_attr(api, info, "strides");
  if (strides.empty()) strides = {1, 1};
  if (group_ < 1) fail("attribute group must be >= 1, got " + std::to_string(group_));
  if (strides.size() != 2 || strides[0] < 1 || strides[1] < 1)
    fail("attribute strides must be two positive integers, got " + dims_str(strides));
  stride_h_ = strides[0];
  stride_w_ = strides[1];
  const std::vector<std::int32_t> table = constant_int32_input(api, info, kAddress);
  if (!table.empty()) address_.set_constant(table.data(), table.size());
}

void AddressConvCudaKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const Ort::ConstValue x = ctx.GetInput(kX);
  const Ort::ConstValue w = ctx.GetInput(kW);
  const Ort::ConstValue b = ctx.GetInput(kB);
  const Ort::ConstValue addr = ctx.GetInput(kAddress);
  if (!x || !w || !addr) fail("inputs X, W and address are required");

  const std::vector<std::int64_t> xd = x.GetTensorTypeAndShapeInfo().GetShape();
  const std::vector<std::int64_t> wd = w.GetTensorTypeAndShapeInfo().GetShape();
  const auto ainfo = addr.GetTensorTypeAndShapeInfo();
  const std::vector<std::int64_t> ad = ainfo.GetShape();
  if (xd.size() != 4) fail("X must be 4-D [N, C, H, W], got " + dims_str(xd));
  if (ainfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) fail("address must be int32");
  if (ad.size() != 2 || ad[1] != 3) fail("address must have shape [Cin, 3], got " + dims_str(ad));

  AddressConvShape s;
  s.batch = xd[0];
  s.src_channels = xd[1];
  s.height = xd[2];
  s.width = xd[3];
  s.in_channels = ad[0];
  s.group = group_;
  s.stride_h = stride_h_;
  s.stride_w = stride_w_;
  if (s.in_channels % group_ != 0)
    fail("Cin = " + std::to_string(s.in_channels) + " (rows of address) is not divisible by group = " +
         std::to_string(group_));
  if (wd.size() != 4 || wd[1] != s.in_channels / group_ || wd[2] != 1 || wd[3] != 1)
    fail("W must have shape [Cout, Cin/group, 1, 1] = [Cout, " + std::to_string(s.in_channels / group_) +
         ", 1, 1], got " + dims_str(wd));
  s.out_channels = wd[0];
  if (s.out_channels % group_ != 0)
    fail("Cout = " + std::to_string(s.out_channels) + " is not divisible by group = " + std::to_string(group_));
  const float* bias = nullptr;
  if (b) {
    const std::vector<std::int64_t> bd = b.GetTensorTypeAndShapeInfo().GetShape();
    if (bd.size() != 1 || bd[0] != s.out_channels)
      fail("B must have shape [Cout] = [" + std::to_string(s.out_channels) + "], got " + dims_str(bd));
    bias = b.GetTensorData<float>();
  }
  if (s.in_channels > 65535 || s.out_channels > 65535)
    fail("the CUDA kernel supports at most 65535 input and output channels");

  const std::int32_t* a = addr.GetTensorData<std::int32_t>();  // host memory (GetInputMemoryType)
  const std::string bad = validate_addresses(a, s.in_channels, s.src_channels);
  if (!bad.empty()) fail(bad);

  const std::int64_t ho = s.out_height(), wo = s.out_width(), plane = ho * wo;
  Ort::UnownedValue y = ctx.GetOutput(0, std::vector<std::int64_t>{s.batch, s.out_channels, ho, wo});
  float* out = y.GetTensorMutableData<float>();
  if (s.batch == 0 || plane == 0 || s.out_channels == 0) return;

  cudaStream_t stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
  const int device = stream_device(stream);
  const std::size_t per_image = sizeof(float) * std::size_t(s.in_channels * plane);
  const std::int64_t chunk = batch_chunk(s.batch, per_image);
  Scratch scratch(stream, Scratch::rounded(per_image * chunk) + Scratch::rounded(sizeof(std::int32_t) * ad[0] * 3));
  const std::int32_t* address = address_.upload(a, std::size_t(ad[0] * 3), stream, scratch);
  float* cols = scratch.take<float>(std::size_t(s.in_channels * plane * chunk));
  const float* weights = w.GetTensorData<float>();

  auto lock = cublas_.lock();
  cublasHandle_t handle = cublas_.bind(stream, device);
  for (std::int64_t n0 = 0; n0 < s.batch; n0 += chunk) {
    const std::int64_t count = std::min(chunk, s.batch - n0);
    AddressGatherShape g;
    g.batch = count;
    g.src_channels = s.src_channels;
    g.height = s.height;
    g.width = s.width;
    g.in_channels = s.in_channels;
    g.out_height = ho;
    g.out_width = wo;
    g.stride_h = s.stride_h;
    g.stride_w = s.stride_w;
    check(address_conv_gather(stream, g, x.GetTensorData<float>() + n0 * s.src_channels * s.height * s.width,
                              address, cols),
          "address_conv_gather launch");
    float* y_chunk = out + n0 * s.out_channels * plane;
    if (bias) check(broadcast_bias(stream, bias, count, s.out_channels, plane, y_chunk), "broadcast_bias launch");
    GroupedGemm gemm;
    gemm.batch = count;
    gemm.group = group_;
    gemm.m = s.out_channels / group_;
    gemm.k = s.in_channels / group_;
    gemm.n = plane;
    gemm.b_image_stride = s.in_channels * plane;
    gemm.c_image_stride = s.out_channels * plane;
    gemm.accumulate = bias != nullptr;
    grouped_gemm(handle, gemm, weights, cols, y_chunk);
  }
  scratch.release();
}

OrtStatusPtr AddressConvCudaKernel::ComputeV2(OrtKernelContext* context) {
  return to_status(api_, kAddressConv, [&] { Compute(context); });
}

OrtStatusPtr AddressConvCudaOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  return to_status(api, kAddressConv, [&] { *kernel = new AddressConvCudaKernel(api, info); });
}

ONNXTensorElementDataType AddressConvCudaOp::GetInputType(std::size_t index) const {
  return index == kAddress ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

OrtCustomOpInputOutputCharacteristic AddressConvCudaOp::GetInputCharacteristic(std::size_t index) const {
  return index == kB ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

OrtMemType AddressConvCudaOp::GetInputMemoryType(std::size_t index) const {
  return index == kAddress ? OrtMemTypeCPUInput : OrtMemTypeDefault;
}

}  // namespace onnxopt::cuda
