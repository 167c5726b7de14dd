// onnxruntime custom-op wrapper of AddressConv: reads attributes and tensors, checks shapes,
// and runs address_conv() over onnxruntime's intra-op thread pool.
#include "address_conv_op.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "op_names.h"

namespace onnxopt {
namespace {

constexpr std::size_t kX = 0, kW = 1, kB = 2, kAddress = 3, kResidual = 4;

std::string dims_str(const std::vector<std::int64_t>& d) {
  std::string s = "[";
  for (std::size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

[[noreturn]] void fail(const std::string& what) {
  throw std::invalid_argument(std::string(kAddressConv) + ": " + what);
}

std::int64_t int_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name, std::int64_t fallback) {
  std::int64_t v = fallback;
  OrtStatus* st = api.KernelInfoGetAttribute_int64(info, name, &v);
  if (st) {
    api.ReleaseStatus(st);
    return fallback;
  }
  return v;
}

float float_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name, float fallback) {
  float v = fallback;
  OrtStatus* st = api.KernelInfoGetAttribute_float(info, name, &v);
  if (st) {
    api.ReleaseStatus(st);
    return fallback;
  }
  return v;
}

std::vector<std::int64_t> ints_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name,
                                    std::vector<std::int64_t> fallback) {
  std::size_t size = 0;
  OrtStatus* st = api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size);
  if (st) {
    api.ReleaseStatus(st);
    return fallback;
  }
  std::vector<std::int64_t> v(size);
  Ort::ThrowOnError(api.KernelInfoGetAttributeArray_int64(info, name, v.data(), &size));
  return v;
}

struct ParallelCall {
  const std::function<void(std::size_t)>* fn;
  static void run(void* self, std::size_t i) { (*static_cast<ParallelCall*>(self)->fn)(i); }
};

}  // namespace

AddressConvKernel::AddressConvKernel(const OrtApi& api, const OrtKernelInfo* info)
    : api_(api), isa_(gemm_isa()) {
  group_ = int_attr(api, info, "group", 1);
  const std::vector<std::int64_t> strides = ints_attr(api, info, "strides", {1, 1});
  if (group_ < 1) fail("attribute group must be >= 1, got " + std::to_string(group_));
  if (strides.size() != 2 || strides[0] < 1 || strides[1] < 1)
    fail("attribute strides must be two positive integers, got " + dims_str(strides));
  stride_h_ = strides[0];
  stride_w_ = strides[1];
  clip_min_ = float_attr(api, info, "clip_min", clip_min_);
  clip_max_ = float_attr(api, info, "clip_max", clip_max_);
  if (std::isnan(clip_min_) || std::isnan(clip_max_) || clip_min_ > clip_max_)
    fail("attributes clip_min = " + std::to_string(clip_min_) + " and clip_max = " + std::to_string(clip_max_) +
         " are not an interval");

  // Weights that are initializers are packed once here instead of on every run.
  int is_constant = 0;
  const OrtValue* w = nullptr;
  OrtStatus* st = api.KernelInfoGetConstantInput_tensor(info, kW, &is_constant, &w);
  if (st) {
    api.ReleaseStatus(st);
  } else if (is_constant && w) {
    Ort::ConstValue wv(w);
    const std::vector<std::int64_t> d = wv.GetTensorTypeAndShapeInfo().GetShape();
    if (d.size() == 4 && d[2] == 1 && d[3] == 1 && d[0] % group_ == 0 && d[0] > 0 && d[1] > 0) {
      constant_w_dims_ = d;
      packed_ = PackedWeights(wv.GetTensorData<float>(), d[0], d[1], group_, isa_);
    }
  }
}

void AddressConvKernel::Compute(OrtKernelContext* context) {
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

  const std::int32_t* a = addr.GetTensorData<std::int32_t>();
  const std::string bad = validate_addresses(a, s.in_channels, s.src_channels);
  if (!bad.empty()) fail(bad);

  const std::vector<std::int64_t> yd = {s.batch, s.out_channels, s.out_height(), s.out_width()};
  AddressConvEpilogue epilogue;
  epilogue.clip_min = clip_min_;
  epilogue.clip_max = clip_max_;
  if (ctx.GetInputCount() > kResidual) {
    const Ort::ConstValue r = ctx.GetInput(kResidual);
    if (r) {
      const auto rinfo = r.GetTensorTypeAndShapeInfo();
      if (rinfo.GetShape() != yd)
        fail("residual must have the output's shape " + dims_str(yd) + ", got " + dims_str(rinfo.GetShape()));
      epilogue.residual = r.GetTensorData<float>();
    }
  }
  Ort::UnownedValue y = ctx.GetOutput(0, yd);
  float* out = y.GetTensorMutableData<float>();

  PackedWeights per_run;
  const PackedWeights* weights = &packed_;
  if (packed_.empty() || wd != constant_w_dims_) {
    per_run = PackedWeights(w.GetTensorData<float>(), s.out_channels, s.in_channels / group_, group_, isa_);
    weights = &per_run;
  }

  const ParallelFor parallel_for = [&ctx](std::size_t total, const std::function<void(std::size_t)>& fn) {
    ParallelCall call{&fn};
    ctx.ParallelFor(&ParallelCall::run, total, 0, &call);
  };
  address_conv(s, x.GetTensorData<float>(), *weights, bias, a, out, isa_, parallel_for,
               &isa_ == &gemm_isa() ? gemm_channel_isa() : nullptr, epilogue);
}

OrtStatusPtr AddressConvKernel::ComputeV2(OrtKernelContext* context) {
  try {
    Compute(context);
    return nullptr;
  } catch (const Ort::Exception& e) {
    return api_.CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api_.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  }
}

OrtStatusPtr AddressConvOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  try {
    *kernel = new AddressConvKernel(api, info);
    return nullptr;
  } catch (const std::exception& e) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  }
}

const char* AddressConvOp::GetName() const { return kAddressConv; }

ONNXTensorElementDataType AddressConvOp::GetInputType(std::size_t index) const {
  return index == kAddress ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

OrtCustomOpInputOutputCharacteristic AddressConvOp::GetInputCharacteristic(std::size_t index) const {
  return index == kB || index == kResidual ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

}  // namespace onnxopt
