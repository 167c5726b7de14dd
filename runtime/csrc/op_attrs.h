// What the CPU ops (csrc/*_op.cc) and the CUDA ops (cuda/*_cuda.cc) of the same kind share:
// attribute reading, and the attribute and input-shape checks.  Each check returns an empty
// string when all is well, else the message; the caller adds its own prefix ("AddressConv: ",
// "AddressConv (CUDA): ") and raises it, so a rule and its message live here only.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "address_conv.h"
#include "op_names.h"

namespace onnxopt {

inline std::string dims_str(const std::vector<std::int64_t>& d) {
  std::string s = "[";
  for (std::size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// `fallback` when the attribute is absent.
inline std::int64_t int_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name, std::int64_t fallback) {
  std::int64_t v = fallback;
  if (OrtStatus* st = api.KernelInfoGetAttribute_int64(info, name, &v)) {
    api.ReleaseStatus(st);
    return fallback;
  }
  return v;
}

// `fallback` when the attribute is absent.
inline float float_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name, float fallback) {
  float v = fallback;
  if (OrtStatus* st = api.KernelInfoGetAttribute_float(info, name, &v)) {
    api.ReleaseStatus(st);
    return fallback;
  }
  return v;
}

// `fallback` when the attribute is absent (a present, empty list stays empty).
inline std::vector<std::int64_t> ints_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name,
                                           std::vector<std::int64_t> fallback) {
  std::size_t size = 0;
  if (OrtStatus* st = api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size)) {
    api.ReleaseStatus(st);
    return fallback;
  }
  std::vector<std::int64_t> v(size);
  if (size) Ort::ThrowOnError(api.KernelInfoGetAttributeArray_int64(info, name, v.data(), &size));
  return v;
}

// Empty when the attribute is absent.
inline std::vector<std::int64_t> ints_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name) {
  return ints_attr(api, info, name, {});
}

// Empty when the attribute is absent.
inline std::string string_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name) {
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

// Whether the node gives input `index` (an optional input left out has no name).
inline bool has_input(const OrtApi& api, const OrtKernelInfo* info, std::size_t index) {
  std::size_t count = 0;
  if (OrtStatus* st = api.KernelInfo_GetInputCount(info, &count)) {
    api.ReleaseStatus(st);
    return true;
  }
  if (index >= count) return false;
  std::size_t size = 0;
  if (OrtStatus* st = api.KernelInfo_GetInputName(info, index, nullptr, &size)) {
    api.ReleaseStatus(st);
    return true;
  }
  return size > 1;  // size counts the terminating NUL
}

// Input `index` when it is a constant initializer (its value is then fixed for the session: a
// kernel may pack it once), else an empty value.
inline Ort::ConstValue constant_input(const OrtApi& api, const OrtKernelInfo* info, std::size_t index) {
  int is_constant = 0;
  const OrtValue* value = nullptr;
  if (OrtStatus* st = api.KernelInfoGetConstantInput_tensor(info, index, &is_constant, &value)) {
    api.ReleaseStatus(st);
    return Ort::ConstValue(nullptr);
  }
  return Ort::ConstValue(is_constant ? value : nullptr);
}

// Attributes <prefix>clip_min and <prefix>clip_max (defaults -inf / +inf, kept where absent): an
// interval, else what is wrong.
inline std::string clip_attrs(const OrtApi& api, const OrtKernelInfo* info, float& lo, float& hi,
                              const std::string& prefix = "") {
  lo = float_attr(api, info, (prefix + "clip_min").c_str(), lo);
  hi = float_attr(api, info, (prefix + "clip_max").c_str(), hi);
  if (lo != lo || hi != hi || lo > hi)
    return "attributes " + prefix + "clip_min = " + std::to_string(lo) + " and " + prefix +
           "clip_max = " + std::to_string(hi) + " are not an interval";
  return {};
}

inline bool all_positive(const std::vector<std::int64_t>& v) {
  for (std::int64_t x : v)
    if (x < 1) return false;
  return true;
}

// Runs `body` of a CPU op (its kernel's ComputeV2 or the op's CreateKernelV2), turning what it
// throws into an onnxruntime status with the message as it is: an Ort::Exception keeps its code
// when `keep_ort_codes`, anything else is ORT_INVALID_ARGUMENT.  (The CUDA ops use to_status().)
template <class Body>
OrtStatusPtr cpu_status(const OrtApi& api, bool keep_ort_codes, Body&& body) {
  try {
    body();
    return nullptr;
  } catch (const Ort::Exception& e) {
    return api.CreateStatus(keep_ort_codes ? e.GetOrtErrorCode() : ORT_INVALID_ARGUMENT, e.what());
  } catch (const std::exception& e) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  }
}

// onnxruntime's intra-op thread pool of this run as the ParallelFor the CPU kernels take.
struct OrtParallelCall {
  const std::function<void(std::size_t)>* fn;
  static void run(void* self, std::size_t i) { (*static_cast<OrtParallelCall*>(self)->fn)(i); }
};

inline ParallelFor ort_parallel_for(Ort::KernelContext& ctx) {
  return [&ctx](std::size_t total, const std::function<void(std::size_t)>& fn) {
    OrtParallelCall call{&fn};
    ctx.ParallelFor(&OrtParallelCall::run, total, 0, &call);
  };
}

// What the CPU and CUDA custom ops declare alike: one float output, and the domain version.
template <class Op, class Kernel>
struct FloatOutputOp : Ort::CustomOpBase<Op, Kernel, true> {
  std::size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  int start_ver_ = kOpVersion;
  int end_ver_ = kOpVersion;
};

// The bias check of both convolutions: B [Cout] when given (`bd` its shape, nullptr when absent).
inline std::string check_bias(const std::vector<std::int64_t>* bd, std::int64_t out_channels) {
  if (bd && (bd->size() != 1 || (*bd)[0] != out_channels))
    return "B must have shape [Cout] = [" + std::to_string(out_channels) + "], got " + dims_str(*bd);
  return {};
}

// ---- AddressConv ----

// The input indices.
namespace address_conv_in {
inline constexpr std::size_t kX = 0, kW = 1, kB = 2, kAddress = 3, kResidual = 4;
}

// Attributes group and strides (already read, absent ones defaulted by the caller).
struct AddressConvAttrs {
  std::int64_t group = 1, stride_h = 1, stride_w = 1;
};

inline std::string address_conv_attrs(std::int64_t group, const std::vector<std::int64_t>& strides,
                                      AddressConvAttrs& a) {
  if (group < 1) return "attribute group must be >= 1, got " + std::to_string(group);
  if (strides.size() != 2 || strides[0] < 1 || strides[1] < 1)
    return "attribute strides must be two positive integers, got " + dims_str(strides);
  a.group = group;
  a.stride_h = strides[0];
  a.stride_w = strides[1];
  return {};
}

// Checks X [N, Csrc, H, W], address [Cin, 3] int32, W [Cout, Cin/group, 1, 1] and B [Cout] (`bd`
// nullptr when absent) and fills `s`.  The address values are checked by validate_addresses().
inline std::string address_conv_inputs(const AddressConvAttrs& a, const std::vector<std::int64_t>& xd,
                                       const std::vector<std::int64_t>& wd, ONNXTensorElementDataType address_type,
                                       const std::vector<std::int64_t>& ad, const std::vector<std::int64_t>* bd,
                                       AddressConvShape& s) {
  if (xd.size() != 4) return "X must be 4-D [N, C, H, W], got " + dims_str(xd);
  if (address_type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) return "address must be int32";
  if (ad.size() != 2 || ad[1] != 3) return "address must have shape [Cin, 3], got " + dims_str(ad);
  s.batch = xd[0];
  s.src_channels = xd[1];
  s.height = xd[2];
  s.width = xd[3];
  s.in_channels = ad[0];
  s.group = a.group;
  s.stride_h = a.stride_h;
  s.stride_w = a.stride_w;
  if (s.in_channels % a.group != 0)
    return "Cin = " + std::to_string(s.in_channels) + " (rows of address) is not divisible by group = " +
           std::to_string(a.group);
  if (wd.size() != 4 || wd[1] != s.in_channels / a.group || wd[2] != 1 || wd[3] != 1)
    return "W must have shape [Cout, Cin/group, 1, 1] = [Cout, " + std::to_string(s.in_channels / a.group) +
           ", 1, 1], got " + dims_str(wd);
  s.out_channels = wd[0];
  if (s.out_channels % a.group != 0)
    return "Cout = " + std::to_string(s.out_channels) + " is not divisible by group = " + std::to_string(a.group);
  return check_bias(bd, s.out_channels);
}

// The tensors of one AddressConv run (inputs X, W, B, address in that order), fetched from `ctx`
// and checked with address_conv_inputs(); the address values are left to validate_addresses().
struct AddressConvInputs {
  Ort::ConstValue x, w, address;
  std::vector<std::int64_t> wd;  // W's shape
  const float* bias = nullptr;   // B's data, nullptr when absent
  AddressConvShape shape;
};

inline std::string read_address_conv_inputs(Ort::KernelContext& ctx, const AddressConvAttrs& a,
                                            AddressConvInputs& in) {
  using namespace address_conv_in;
  in.x = ctx.GetInput(kX);
  in.w = ctx.GetInput(kW);
  const Ort::ConstValue b = ctx.GetInput(kB);
  in.address = ctx.GetInput(kAddress);
  if (!in.x || !in.w || !in.address) return "inputs X, W and address are required";
  in.wd = in.w.GetTensorTypeAndShapeInfo().GetShape();
  const auto ainfo = in.address.GetTensorTypeAndShapeInfo();
  std::vector<std::int64_t> bd;
  if (b) bd = b.GetTensorTypeAndShapeInfo().GetShape();
  const std::string error = address_conv_inputs(a, in.x.GetTensorTypeAndShapeInfo().GetShape(), in.wd,
                                                ainfo.GetElementType(), ainfo.GetShape(), b ? &bd : nullptr, in.shape);
  if (error.empty() && b) in.bias = b.GetTensorData<float>();
  return error;
}

// The optional input `residual` at `index` (nullptr when absent), which must have the output's
// shape `yd`: empty when it fits, else what is wrong.
inline std::string read_residual(Ort::KernelContext& ctx, std::size_t index, const std::vector<std::int64_t>& yd,
                                 const float*& residual) {
  residual = nullptr;
  if (ctx.GetInputCount() <= index) return {};
  const Ort::ConstValue r = ctx.GetInput(index);
  if (!r) return {};
  const std::vector<std::int64_t> rd = r.GetTensorTypeAndShapeInfo().GetShape();
  if (rd != yd) return "residual must have the output's shape " + dims_str(yd) + ", got " + dims_str(rd);
  residual = r.GetTensorData<float>();
  return {};
}

// ---- PerforatedConv ----

// The input indices.
namespace perforated_conv_in {
inline constexpr std::size_t kX = 0, kW = 1, kB = 2, kPositions = 3, kFill = 4;
}

// Conv's attributes (auto_pad only NOTSET or VALID); kernel_shape empty when absent.
struct PerforatedConvAttrs {
  std::int64_t group = 1;
  std::vector<std::int64_t> kernel_shape, strides, pads, dilations;
};

inline std::string read_perforated_conv_attrs(const OrtApi& api, const OrtKernelInfo* info, PerforatedConvAttrs& a) {
  a.group = int_attr(api, info, "group", 1);
  a.kernel_shape = ints_attr(api, info, "kernel_shape");
  a.strides = ints_attr(api, info, "strides");
  a.pads = ints_attr(api, info, "pads");
  a.dilations = ints_attr(api, info, "dilations");
  if (a.strides.empty()) a.strides = {1, 1};
  if (a.dilations.empty()) a.dilations = {1, 1};
  if (a.pads.empty()) a.pads = {0, 0, 0, 0};
  const std::string auto_pad = string_attr(api, info, "auto_pad");
  if (!auto_pad.empty() && auto_pad != "NOTSET" && auto_pad != "VALID")
    return "auto_pad " + auto_pad + " is not supported; give explicit pads";
  if (a.group < 1) return "attribute group must be >= 1, got " + std::to_string(a.group);
  if (a.strides.size() != 2 || !all_positive(a.strides))
    return "attribute strides must be two positive integers, got " + dims_str(a.strides);
  if (a.dilations.size() != 2 || !all_positive(a.dilations))
    return "attribute dilations must be two positive integers, got " + dims_str(a.dilations);
  if (a.pads.size() != 4 || a.pads[0] < 0 || a.pads[1] < 0 || a.pads[2] < 0 || a.pads[3] < 0)
    return "attribute pads must be four non-negative integers, got " + dims_str(a.pads);
  if (!a.kernel_shape.empty() && (a.kernel_shape.size() != 2 || !all_positive(a.kernel_shape)))
    return "attribute kernel_shape must be two positive integers, got " + dims_str(a.kernel_shape);
  return {};
}

// Checks X [N, Cin, H, W], W [Cout, Cin/group, kh, kw], positions [P] and fill [Ho*Wo] (both
// int32) and B [Cout] (`bd` nullptr when absent) against each other and the attributes.  The
// output size and the mask values are checked by the caller.
inline std::string perforated_conv_inputs(const PerforatedConvAttrs& a, const std::vector<std::int64_t>& xd,
                                          const std::vector<std::int64_t>& wd, ONNXTensorElementDataType positions_type,
                                          ONNXTensorElementDataType fill_type, const std::vector<std::int64_t>& pd,
                                          const std::vector<std::int64_t>& fd, const std::vector<std::int64_t>* bd) {
  if (xd.size() != 4) return "X must be 4-D [N, C, H, W], got " + dims_str(xd);
  if (wd.size() != 4) return "W must be 4-D [Cout, Cin/group, kh, kw], got " + dims_str(wd);
  if (positions_type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 || fill_type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)
    return "positions and fill must be int32";
  if (pd.size() != 1) return "positions must be 1-D [P], got " + dims_str(pd);
  if (fd.size() != 1) return "fill must be 1-D [Ho*Wo], got " + dims_str(fd);
  const std::int64_t cin = xd[1], cout = wd[0];
  if (!a.kernel_shape.empty() && (a.kernel_shape[0] != wd[2] || a.kernel_shape[1] != wd[3]))
    return "kernel_shape " + dims_str(a.kernel_shape) + " does not match W " + dims_str(wd);
  if (cin % a.group != 0 || wd[1] != cin / a.group)
    return "W " + dims_str(wd) + " does not fit X " + dims_str(xd) + " with group " + std::to_string(a.group) +
           " (need W[1] = Cin/group)";
  if (cout % a.group != 0)
    return "Cout = " + std::to_string(cout) + " is not divisible by group = " + std::to_string(a.group);
  return check_bias(bd, cout);
}

// The tensors of one PerforatedConv run (inputs X, W, B, positions, fill in that order), fetched
// from `ctx` and checked with perforated_conv_inputs().
struct PerforatedConvInputs {
  Ort::ConstValue x, w, positions, fill;
  std::vector<std::int64_t> xd, wd, pd, fd;  // the shapes of X, W, positions, fill
  const float* bias = nullptr;               // B's data, nullptr when absent
};

inline std::string read_perforated_conv_inputs(Ort::KernelContext& ctx, const PerforatedConvAttrs& a,
                                               PerforatedConvInputs& in) {
  using namespace perforated_conv_in;
  in.x = ctx.GetInput(kX);
  in.w = ctx.GetInput(kW);
  const Ort::ConstValue b = ctx.GetInput(kB);
  in.positions = ctx.GetInput(kPositions);
  in.fill = ctx.GetInput(kFill);
  if (!in.x || !in.w || !in.positions || !in.fill) return "inputs X, W, positions and fill are required";
  in.xd = in.x.GetTensorTypeAndShapeInfo().GetShape();
  in.wd = in.w.GetTensorTypeAndShapeInfo().GetShape();
  const auto pinfo = in.positions.GetTensorTypeAndShapeInfo();
  const auto finfo = in.fill.GetTensorTypeAndShapeInfo();
  in.pd = pinfo.GetShape();
  in.fd = finfo.GetShape();
  std::vector<std::int64_t> bd;
  if (b) bd = b.GetTensorTypeAndShapeInfo().GetShape();
  const std::string error = perforated_conv_inputs(a, in.xd, in.wd, pinfo.GetElementType(), finfo.GetElementType(),
                                                   in.pd, in.fd, b ? &bd : nullptr);
  if (error.empty() && b) in.bias = b.GetTensorData<float>();
  return error;
}

// The messages of the output-size checks (each op decides when they apply).
inline std::string no_output_positions(const std::vector<std::int64_t>& xd) {
  return "X " + dims_str(xd) + " is smaller than the (dilated) kernel: no output positions";
}

inline std::string mask_size_mismatch(std::int64_t fill_entries, const std::vector<std::int64_t>& xd, std::int64_t ho,
                                      std::int64_t wo) {
  return "the mask was made for " + std::to_string(fill_entries) + " output positions (fill has that many entries) "
         "but X " + dims_str(xd) + " gives " + std::to_string(ho) + " x " + std::to_string(wo) + " = " +
         std::to_string(ho * wo) + "; perforate the model for this input size";
}

}  // namespace onnxopt
