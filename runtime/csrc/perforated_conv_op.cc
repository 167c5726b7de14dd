// onnxruntime custom-op wrapper of PerforatedConv: reads attributes and tensors, checks shapes and
// the mask (the checks shared with the CUDA op are in op_attrs.h), and runs perforated_conv() over
// onnxruntime's intra-op thread pool.
#include "perforated_conv_op.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "op_names.h"

namespace onnxopt {
namespace {

using namespace perforated_conv_in;

[[noreturn]] void fail(const std::string& what) {
  throw std::invalid_argument(std::string(kPerforatedConv) + ": " + what);
}

void fail_if(const std::string& error) {
  if (!error.empty()) fail(error);
}

}  // namespace

PerforatedConvKernel::PerforatedConvKernel(const OrtApi& api, const OrtKernelInfo* info)
    : api_(api), isa_(gemm_isa()) {
  fail_if(read_perforated_conv_attrs(api, info, attrs_));
  fail_if(clip_attrs(api, info, clip_min_, clip_max_));

  // Weights that are initializers are packed once here instead of on every run.
  if (const Ort::ConstValue wv = constant_input(api, info, kW)) {
    const std::vector<std::int64_t> d = wv.GetTensorTypeAndShapeInfo().GetShape();
    if (d.size() == 4 && d[0] > 0 && d[0] % attrs_.group == 0 && d[1] > 0 && d[2] > 0 && d[3] > 0) {
      constant_w_dims_ = d;
      packed_ = PackedWeights(wv.GetTensorData<float>(), d[0], d[1] * d[2] * d[3], attrs_.group, isa_);
    }
  }
}

void PerforatedConvKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  PerforatedConvInputs in;
  fail_if(read_perforated_conv_inputs(ctx, attrs_, in));
  const std::vector<std::int64_t>& xd = in.xd;
  const std::vector<std::int64_t>& wd = in.wd;
  const std::vector<std::int64_t>& pd = in.pd;
  const std::vector<std::int64_t>& fd = in.fd;

  PerforatedConvShape s;
  s.batch = xd[0];
  s.in_channels = xd[1];
  s.height = xd[2];
  s.width = xd[3];
  s.out_channels = wd[0];
  s.group = attrs_.group;
  s.kernel_h = wd[2];
  s.kernel_w = wd[3];
  s.stride_h = attrs_.strides[0];
  s.stride_w = attrs_.strides[1];
  s.dilation_h = attrs_.dilations[0];
  s.dilation_w = attrs_.dilations[1];
  s.pad_top = attrs_.pads[0];
  s.pad_left = attrs_.pads[1];
  s.pad_bottom = attrs_.pads[2];
  s.pad_right = attrs_.pads[3];
  const std::int64_t ho = s.out_height(), wo = s.out_width();
  if (ho < 1 || wo < 1) fail(no_output_positions(xd));
  if (fd[0] != ho * wo) fail(mask_size_mismatch(fd[0], xd, ho, wo));
  const std::int32_t* p = in.positions.GetTensorData<std::int32_t>();
  const std::int32_t* f = in.fill.GetTensorData<std::int32_t>();
  // The mask's validation and packing plan, from the last run's when the mask is the same.
  std::string mask_error;
  const std::shared_ptr<const PerforatedPlan> plan = plans_.get(s, p, pd[0], f, isa_, &mask_error);
  fail_if(mask_error);

  Ort::UnownedValue y = ctx.GetOutput(0, std::vector<std::int64_t>{s.batch, s.out_channels, ho, wo});
  float* out = y.GetTensorMutableData<float>();

  PackedWeights per_run;
  const PackedWeights* weights = &packed_;
  if (packed_.empty() || wd != constant_w_dims_) {
    per_run = PackedWeights(in.w.GetTensorData<float>(), s.out_channels, s.k_per_group(), attrs_.group, isa_);
    weights = &per_run;
  }
  const ParallelFor parallel_for = ort_parallel_for(ctx);
  perforated_conv(s, in.x.GetTensorData<float>(), *weights, in.bias, *plan, out, isa_, parallel_for, clip_min_,
                  clip_max_);
}

OrtStatusPtr PerforatedConvKernel::ComputeV2(OrtKernelContext* context) {
  return cpu_status(api_, true, [&] { Compute(context); });
}

OrtStatusPtr PerforatedConvOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  return cpu_status(api, false, [&] { *kernel = new PerforatedConvKernel(api, info); });
}

const char* PerforatedConvOp::GetName() const { return kPerforatedConv; }

ONNXTensorElementDataType PerforatedConvOp::GetInputType(std::size_t index) const {
  return index >= kPositions ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

OrtCustomOpInputOutputCharacteristic PerforatedConvOp::GetInputCharacteristic(std::size_t index) const {
  return index == kB ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

}  // namespace onnxopt
