// onnxruntime custom-op wrapper of AddressConv: reads attributes and tensors, checks shapes (the
// checks shared with the CUDA op are in op_attrs.h), and runs address_conv() over onnxruntime's
// intra-op thread pool.
#include "address_conv_op.h"

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "op_names.h"

namespace onnxopt {
namespace {

using namespace address_conv_in;

[[noreturn]] void fail(const std::string& what) {
  throw std::invalid_argument(std::string(kAddressConv) + ": " + what);
}

void fail_if(const std::string& error) {
  if (!error.empty()) fail(error);
}

}  // namespace

AddressConvKernel::AddressConvKernel(const OrtApi& api, const OrtKernelInfo* info)
    : api_(api), isa_(gemm_isa()) {
  fail_if(address_conv_attrs(int_attr(api, info, "group", 1), ints_attr(api, info, "strides", {1, 1}), attrs_));
  fail_if(clip_attrs(api, info, clip_min_, clip_max_));

  // Weights that are initializers are packed once here instead of on every run.
  if (const Ort::ConstValue wv = constant_input(api, info, kW)) {
    const std::vector<std::int64_t> d = wv.GetTensorTypeAndShapeInfo().GetShape();
    if (d.size() == 4 && d[2] == 1 && d[3] == 1 && d[0] % attrs_.group == 0 && d[0] > 0 && d[1] > 0) {
      constant_w_dims_ = d;
      packed_ = PackedWeights(wv.GetTensorData<float>(), d[0], d[1], attrs_.group, isa_);
    }
  }
}

void AddressConvKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  AddressConvInputs in;
  fail_if(read_address_conv_inputs(ctx, attrs_, in));
  const AddressConvShape& s = in.shape;

  const std::int32_t* a = in.address.GetTensorData<std::int32_t>();
  fail_if(validate_addresses(a, s.in_channels, s.src_channels));

  const std::vector<std::int64_t> yd = {s.batch, s.out_channels, s.out_height(), s.out_width()};
  AddressConvEpilogue epilogue;
  epilogue.clip_min = clip_min_;
  epilogue.clip_max = clip_max_;
  fail_if(read_residual(ctx, kResidual, yd, epilogue.residual));
  Ort::UnownedValue y = ctx.GetOutput(0, yd);
  float* out = y.GetTensorMutableData<float>();

  PackedWeights per_run;
  const PackedWeights* weights = &packed_;
  if (packed_.empty() || in.wd != constant_w_dims_) {
    per_run =
        PackedWeights(in.w.GetTensorData<float>(), s.out_channels, s.in_channels / attrs_.group, attrs_.group, isa_);
    weights = &per_run;
  }

  const ParallelFor parallel_for = ort_parallel_for(ctx);
  address_conv(s, in.x.GetTensorData<float>(), *weights, in.bias, a, out, isa_, parallel_for,
               &isa_ == &gemm_isa() ? gemm_channel_isa() : nullptr, epilogue);
}

OrtStatusPtr AddressConvKernel::ComputeV2(OrtKernelContext* context) {
  return cpu_status(api_, true, [&] { Compute(context); });
}

OrtStatusPtr AddressConvOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  return cpu_status(api, false, [&] { *kernel = new AddressConvKernel(api, info); });
}

const char* AddressConvOp::GetName() const { return kAddressConv; }

ONNXTensorElementDataType AddressConvOp::GetInputType(std::size_t index) const {
  return index == kAddress ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

OrtCustomOpInputOutputCharacteristic AddressConvOp::GetInputCharacteristic(std::size_t index) const {
  return index == kB || index == kResidual ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

}  // namespace onnxopt
