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
  fail_if(clip_attrs(api, info, clip_.clip_min, clip_.clip_max));
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
  const std::vector<std::int64_t> yd = {s.batch, s.out_channels, ho, wo};
  const float* residual = nullptr;
  fail_if(read_residual(ctx, kResidual, yd, residual));
  Ort::UnownedValue y = ctx.GetOutput(0, yd);
  float* out = y.GetTensorMutableData<float>();
  if (s.batch == 0 || plane == 0 || s.out_channels == 0) return;

  // An identity table at stride 1: the GEMM reads X's first Cin planes as they are, nothing is gathered.
  const bool direct = s.stride_h == 1 && s.stride_w == 1 && identity_table(a, s.in_channels);

  cudaStream_t stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
  const int device = stream_device(stream);
  const std::size_t per_image = direct ? 0 : sizeof(float) * std::size_t(s.in_channels * plane);
  const std::int64_t chunk = batch_chunk(s.batch, per_image);  // all of it when direct, at most 65535 (grid z)
  Scratch scratch(stream, direct ? 0
                                 : Scratch::rounded(per_image * chunk) +
                                       Scratch::rounded(sizeof(std::int32_t) * s.in_channels * 3));
  const std::int32_t* address = direct ? nullptr : address_.upload(a, std::size_t(s.in_channels * 3), stream, scratch);
  float* cols = direct ? nullptr : scratch.take<float>(std::size_t(s.in_channels * plane * chunk));
  const float* weights = in.w.GetTensorData<float>();
  const float* x = in.x.GetTensorData<float>();
  const std::int64_t x_image = s.src_channels * s.height * s.width, y_image = s.out_channels * plane;

  auto lock = cublas_.lock();
  cublasHandle_t handle = cublas_.bind(stream, device);
  for (std::int64_t n0 = 0; n0 < s.batch; n0 += chunk) {
    const std::int64_t count = std::min(chunk, s.batch - n0);
    if (!direct) {
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
      check(address_conv_gather(stream, g, x + n0 * x_image, address, cols), "address_conv_gather launch");
    }
    float* y_chunk = out + n0 * y_image;
    GroupedGemm gemm;
    gemm.batch = count;
    gemm.group = attrs_.group;
    gemm.m = s.out_channels / attrs_.group;
    gemm.k = s.in_channels / attrs_.group;
    gemm.n = plane;
    gemm.b_image_stride = direct ? x_image : s.in_channels * plane;
    gemm.c_image_stride = y_image;
    grouped_gemm(handle, gemm, weights, direct ? x + n0 * x_image : cols, y_chunk);
    if (bias || residual || !clip_.empty())
      check(epilogue(stream, bias, residual ? residual + n0 * y_image : nullptr, count, s.out_channels, plane,
                     clip_.clip_min, clip_.clip_max, y_chunk),
            "epilogue launch");
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
  return index == kB || index == kResidual ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

OrtMemType AddressConvCudaOp::GetInputMemoryType(std::size_t index) const {
  return index == kAddress ? OrtMemTypeCPUInput : OrtMemTypeDefault;
}

}  // namespace onnxopt::cuda
