#include "address_conv_cuda.h"

#include <algorithm>
#include <string>
#include <vector>

#include "address_conv.h"
#include "address_conv_impl.h"

namespace onnxopt::cuda {
namespace {

using namespace address_conv_in;

[[noreturn]] void fail(const std::string& what) { bad_input(what); }

void fail_if(const std::string& error) {
  if (!error.empty()) fail(error);
}

}  // namespace

AddressConvCudaKernel::AddressConvCudaKernel(const OrtApi& api, const OrtKernelInfo* info) : api_(api) {
  std::vector<std::int64_t> strides = ints_attr(api, info, "strides");
  if (strides.empty()) strides = {1, 1};
  fail_if(address_conv_attrs(int_attr(api, info, "group", 1), strides, attrs_));
  const std::vector<std::int32_t> table = constant_int32_input(api, info, kAddress);
  if (!table.empty()) address_.set_constant(table.data(), table.size());
}

void AddressConvCudaKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  AddressConvInputs in;
  fail_if(read_address_conv_inputs(ctx, attrs_, in));
  const AddressConvShape& s = in.shape;
  const float* bias = in.bias;
  if (s.in_channels > 65535 || s.out_channels > 65535)
    fail("the CUDA kernel supports at most 65535 input and output channels");

  const std::int32_t* a = in.address.GetTensorData<std::int32_t>();  // host memory (GetInputMemoryType)
  fail_if(validate_addresses(a, s.in_channels, s.src_channels));

  const std::int64_t ho = s.out_height(), wo = s.out_width(), plane = ho * wo;
  Ort::UnownedValue y = ctx.GetOutput(0, std::vector<std::int64_t>{s.batch, s.out_channels, ho, wo});
  float* out = y.GetTensorMutableData<float>();
  if (s.batch == 0 || plane == 0 || s.out_channels == 0) return;

  cudaStream_t stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
  const int device = stream_device(stream);
  const std::size_t per_image = sizeof(float) * std::size_t(s.in_channels * plane);
  const std::int64_t chunk = batch_chunk(s.batch, per_image);
  Scratch scratch(stream,
                  Scratch::rounded(per_image * chunk) + Scratch::rounded(sizeof(std::int32_t) * s.in_channels * 3));
  const std::int32_t* address = address_.upload(a, std::size_t(s.in_channels * 3), stream, scratch);
  float* cols = scratch.take<float>(std::size_t(s.in_channels * plane * chunk));
  const float* weights = in.w.GetTensorData<float>();

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
    check(address_conv_gather(stream, g, in.x.GetTensorData<float>() + n0 * s.src_channels * s.height * s.width,
                              address, cols),
          "address_conv_gather launch");
    float* y_chunk = out + n0 * s.out_channels * plane;
    if (bias) check(broadcast_bias(stream, bias, count, s.out_channels, plane, y_chunk), "broadcast_bias launch");
    GroupedGemm gemm;
    gemm.batch = count;
    gemm.group = attrs_.group;
    gemm.m = s.out_channels / attrs_.group;
    gemm.k = s.in_channels / attrs_.group;
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
