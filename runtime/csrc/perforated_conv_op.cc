// onnxruntime custom-op wrapper of PerforatedConv: reads attributes and tensors, checks shapes and
// the mask, and runs perforated_conv() over onnxruntime's intra-op thread pool.
#include "perforated_conv_op.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "op_names.h"

namespace onnxopt {
namespace {

constexpr std::size_t kX = 0, kW = 1, kB = 2, kPositions = 3, kFill = 4;

std::string dims_str(const std::vector<std::int64_t>& d) {
  std::string s = "[";
  for (std::size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

[[noreturn]] void fail(const std::string& what) {
  throw std::invalid_argument(std::string(kPerforatedConv) + ": " + what);
}

std::int64_t int_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name, std::int64_t fallback) {
  std::int64_t v = fallback;
  if (OrtStatus* st = api.KernelInfoGetAttribute_int64(info, name, &v)) {
    api.ReleaseStatus(st);
    return fallback;
  }
  return v;
}

std::vector<std::int64_t> ints_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name) {
  std::size_t size = 0;
  if (OrtStatus* st = api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size)) {
    api.ReleaseStatus(st);
    return {};
  }
  std::vector<std::int64_t> v(size);
  if (size) Ort::ThrowOnError(api.KernelInfoGetAttributeArray_int64(info, name, v.data(), &size));
  return v;
}

std::string string_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name) {
  std::size_t size = 0;
  if (OrtStatus* st = api.KernelInfoGetAttribute_string(info, name, nullptr, &size)) {
    api.ReleaseStatus(st);
    return {};
  }
  std::string v(size, '\0');
  Ort::ThrowOnError(api.KernelInfoGetAttribute_string(info, name, v.data(), &size));
  v.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
  return v;
}

bool all_positive(const std::vector<std::int64_t>& v) {
  for (std::int64_t x : v)
    if (x < 1) return false;
  return true;
}

struct ParallelCall {
  const std::function<void(std::size_t)>* fn;
  static void run(void* self, std::size_t i) { (*static_cast<ParallelCall*>(self)->fn)(i); }
};

}  // namespace

PerforatedConvKernel::PerforatedConvKernel(const OrtApi& api, const OrtKernelInfo* info)
    : api_(api), isa_(gemm_isa()) {
  group_ = int_attr(api, info, "group", 1);
  kernel_shape_ = ints_attr(api, info, "kernel_shape");
  strides_ = ints_attr(api, info, "strides");
  pads_ = ints_attr(api, info, "pads");
  dilations_ = ints_attr(api, info, "dilations");
  if (strides_.empty()) strides_ = {1, 1};
  if (dilations_.empty()) dilations_ = {1, 1};
  if (pads_.empty()) pads_ = {0, 0, 0, 0};
  const std::string auto_pad = string_attr(api, info, "auto_pad");
  if (!auto_pad.empty() && auto_pad != "NOTSET" && auto_pad != "VALID")
    fail("auto_pad " + auto_pad + " is not supported; give explicit pads");
  if (group_ < 1) fail("attribute group must be >= 1, got " + std::to_string(group_));
  if (strides_.size() != 2 || !all_positive(strides_))
    fail("attribute strides must be two positive integers, got " + dims_str(strides_));
  if (dilations_.size() != 2 || !all_positive(dilations_))
    fail("attribute dilations must be two positive integers, got " + dims_str(dilations_));
  if (pads_.size() != 4 || pads_[0] < 0 || pads_[1] < 0 || pads_[2] < 0 || pads_[3] < 0)
    fail("attribute pads must be four non-negative integers, got " + dims_str(pads_));
  if (!kernel_shape_.empty() && (kernel_shape_.size() != 2 || !all_positive(kernel_shape_)))
    fail("attribute kernel_shape must be two positive integers, got " + dims_str(kernel_shape_));

  // Weights that are initializers are packed once here instead of on every run.
  int is_constant = 0;
  const OrtValue* w = nullptr;
  if (OrtStatus* st = api.KernelInfoGetConstantInput_tensor(info, kW, &is_constant, &w)) {
    api.ReleaseStatus(st);
  } else if (is_constant && w) {
    Ort::ConstValue wv(w);
    const std::vector<std::int64_t> d = wv.GetTensorTypeAndShapeInfo().GetShape();
    if (d.size() == 4 && d[0] > 0 && d[0] % group_ == 0 && d[1] > 0 && d[2] > 0 && d[3] > 0) {
      constant_w_dims_ = d;
      packed_ = PackedWeights(wv.GetTensorData<float>(), d[0], d[1] * d[2] * d[3], group_, isa_);
    }
  }
}

void PerforatedConvKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const Ort::ConstValue x = ctx.GetInput(kX);
  const Ort::ConstValue w = ctx.GetInput(kW);
  const Ort::ConstValue b = ctx.GetInput(kB);
  const Ort::ConstValue pos = ctx.GetInput(kPositions);
  const Ort::ConstValue fill = ctx.GetInput(kFill);
  if (!x || !w || !pos || !fill) fail("inputs X, W, positions and fill are required");

  const std::vector<std::int64_t> xd = x.GetTensorTypeAndShapeInfo().GetShape();
  const std::vector<std::int64_t> wd = w.GetTensorTypeAndShapeInfo().GetShape();
  const auto pinfo = pos.GetTensorTypeAndShapeInfo();
  const auto finfo = fill.GetTensorTypeAndShapeInfo();
  if (xd.size() != 4) fail("X must be 4-D [N, C, H, W], got " + dims_str(xd));
  if (wd.size() != 4) fail("W must be 4-D [Cout, Cin/group, kh, kw], got " + dims_str(wd));
  if (pinfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 ||
      finfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)
    fail("positions and fill must be int32");
  const std::vector<std::int64_t> pd = pinfo.GetShape(), fd = finfo.GetShape();
  if (pd.size() != 1) fail("positions must be 1-D [P], got " + dims_str(pd));
  if (fd.size() != 1) fail("fill must be 1-D [Ho*Wo], got " + dims_str(fd));

  PerforatedConvShape s;
  s.batch = xd[0];
  s.in_channels = xd[1];
  s.height = xd[2];
  s.width = xd[3];
  s.out_channels = wd[0];
  s.group = group_;
  s.kernel_h = wd[2];
  s.kernel_w = wd[3];
  s.stride_h = strides_[0];
  s.stride_w = strides_[1];
  s.dilation_h = dilations_[0];
  s.dilation_w = dilations_[1];
  s.pad_top = pads_[0];
  s.pad_left = pads_[1];
  s.pad_bottom = pads_[2];
  s.pad_right = pads_[3];
  if (!kernel_shape_.empty() && (kernel_shape_[0] != wd[2] || kernel_shape_[1] != wd[3]))
    fail("kernel_shape " + dims_str(kernel_shape_) + " does not match W " + dims_str(wd));
  if (s.in_channels % group_ != 0 || wd[1] != s.in_channels / group_)
    fail("W " + dims_str(wd) + " does not fit X " + dims_str(xd) + " with group " + std::to_string(group_) +
         " (need W[1] = Cin/group)");
  if (s.out_channels % group_ != 0)
    fail("Cout = " + std::to_string(s.out_channels) + " is not divisible by group = " + std::to_string(group_));
  const float* bias = nullptr;
  if (b) {
    const std::vector<std::int64_t> bd = b.GetTensorTypeAndShapeInfo().GetShape();
    if (bd.size() != 1 || bd[0] != s.out_channels)
      fail("B must have shape [Cout] = [" + std::to_string(s.out_channels) + "], got " + dims_str(bd));
    bias = b.GetTensorData<float>();
  }
  const std::int64_t ho = s.out_height(), wo = s.out_width();
  if (ho < 1 || wo < 1)
    fail("X " + dims_str(xd) + " is smaller than the (dilated) kernel: no output positions");
  if (fd[0] != ho * wo)
    fail("the mask was made for " + std::to_string(fd[0]) + " output positions (fill has that many entries) "
         "but X " + dims_str(xd) + " gives " + std::to_string(ho) + " x " + std::to_string(wo) + " = " +
         std::to_string(ho * wo) + "; perforate the model for this input size");
  const std::int32_t* p = pos.GetTensorData<std::int32_t>();
  const std::int32_t* f = fill.GetTensorData<std::int32_t>();
  const std::string bad = validate_mask(p, pd[0], f, ho * wo);
  if (!bad.empty()) fail(bad);

  Ort::UnownedValue y = ctx.GetOutput(0, std::vector<std::int64_t>{s.batch, s.out_channels, ho, wo});
  float* out = y.GetTensorMutableData<float>();

  PackedWeights per_run;
  const PackedWeights* weights = &packed_;
  if (packed_.empty() || wd != constant_w_dims_) {
    per_run = PackedWeights(w.GetTensorData<float>(), s.out_channels, s.k_per_group(), group_, isa_);
    weights = &per_run;
  }
  const ParallelFor parallel_for = [&ctx](std::size_t total, const std::function<void(std::size_t)>& fn) {
    ParallelCall call{&fn};
    ctx.ParallelFor(&ParallelCall::run, total, 0, &call);
  };
  perforated_conv(s, x.GetTensorData<float>(), *weights, bias, p, pd[0], f, out, isa_, parallel_for);
}

OrtStatusPtr PerforatedConvKernel::ComputeV2(OrtKernelContext* context) {
  try {
    Compute(context);
    return nullptr;
  } catch (const Ort::Exception& e) {
    return api_.CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api_.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  }
}

OrtStatusPtr PerforatedConvOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  try {
    *kernel = new PerforatedConvKernel(api, info);
    return nullptr;
  } catch (const std::exception& e) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  }
}

const char* PerforatedConvOp::GetName() const { return kPerforatedConv; }

ONNXTensorElementDataType PerforatedConvOp::GetInputType(std::size_t index) const {
  return index >= kPositions ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

OrtCustomOpInputOutputCharacteristic PerforatedConvOp::GetInputCharacteristic(std::size_t index) const {
  return index == kB ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

}  // namespace onnxopt
