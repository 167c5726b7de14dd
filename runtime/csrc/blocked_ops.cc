#include "blocked_ops.h"

#include <stdexcept>
#include <string>

#include "op_names.h"

namespace onnxopt {
namespace {

void fail_if(const char* op, const std::string& error) {
  if (!error.empty()) throw std::invalid_argument(std::string(op) + ": " + error);
}

// A blocked tensor's shape [N, Cb, H + 2, W + 2, 16], else what is wrong.
std::string check_blocked(const char* what, const std::vector<std::int64_t>& d) {
  if (d.size() != 5 || d[4] != kBlock || d[2] < 2 || d[3] < 2)
    return std::string(what) + " must be blocked [N, ceil(C/16), H + 2, W + 2, 16], got " + dims_str(d);
  return {};
}

}  // namespace

OrtStatusPtr ToBlockedKernel::ComputeV2(OrtKernelContext* context) {
  return cpu_status(api_, true, [&] {
    Ort::KernelContext ctx(context);
    const Ort::ConstValue x = ctx.GetInput(0);
    const std::vector<std::int64_t> d = x.GetTensorTypeAndShapeInfo().GetShape();
    if (d.size() != 4) fail_if(kToBlocked, "X must be 4-D [N, C, H, W], got " + dims_str(d));
    Ort::UnownedValue y = ctx.GetOutput(0, {d[0], blocks_of(d[1]), d[2] + 2, d[3] + 2, kBlock});
    to_blocked(x.GetTensorData<float>(), d[0], d[1], d[2], d[3], y.GetTensorMutableData<float>(), isa_,
               ort_parallel_for(ctx));
  });
}

OrtStatusPtr ToBlockedOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  return cpu_status(api, false, [&] { *kernel = new ToBlockedKernel(api, info); });
}

const char* ToBlockedOp::GetName() const { return kToBlocked; }

FromBlockedKernel::FromBlockedKernel(const OrtApi& api, const OrtKernelInfo* info)
    : api_(api), isa_(gemm_isa()), channels_(int_attr(api, info, "channels", 0)) {
  if (channels_ < 1)
    fail_if(kFromBlocked, "attribute channels must be a positive integer, got " + std::to_string(channels_));
}

OrtStatusPtr FromBlockedKernel::ComputeV2(OrtKernelContext* context) {
  return cpu_status(api_, true, [&] {
    Ort::KernelContext ctx(context);
    const Ort::ConstValue x = ctx.GetInput(0);
    const std::vector<std::int64_t> d = x.GetTensorTypeAndShapeInfo().GetShape();
    fail_if(kFromBlocked, check_blocked("X", d));
    if (d[1] != blocks_of(channels_))
      fail_if(kFromBlocked, "X has " + std::to_string(d[1]) + " channel blocks, channels = " +
                                std::to_string(channels_) + " needs " + std::to_string(blocks_of(channels_)));
    Ort::UnownedValue y = ctx.GetOutput(0, {d[0], channels_, d[2] - 2, d[3] - 2});
    from_blocked(x.GetTensorData<float>(), d[0], channels_, d[2] - 2, d[3] - 2, y.GetTensorMutableData<float>(),
                 isa_, ort_parallel_for(ctx));
  });
}

OrtStatusPtr FromBlockedOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  return cpu_status(api, false, [&] { *kernel = new FromBlockedKernel(api, info); });
}

const char* FromBlockedOp::GetName() const { return kFromBlocked; }

BlockedAddressConvKernel::BlockedAddressConvKernel(const OrtApi& api, const OrtKernelInfo* info)
    : api_(api), isa_(gemm_isa()) {
  fail_if(kBlockedAddressConv, address_conv_attrs(1, ints_attr(api, info, "strides", {1, 1}), attrs_));
  fail_if(kBlockedAddressConv, clip_attrs(api, info, clip_min_, clip_max_));
  if (const Ort::ConstValue wv = constant_input(api, info, address_conv_in::kW)) {
    const std::vector<std::int64_t> d = wv.GetTensorTypeAndShapeInfo().GetShape();
    if (d.size() == 4 && d[2] == 1 && d[3] == 1 && d[0] > 0 && d[1] > 0) {
      constant_w_dims_ = d;
      packed_ = BlockedWeights(wv.GetTensorData<float>(), d[0], d[1]);
    }
  }
}

void BlockedAddressConvKernel::Compute(OrtKernelContext* context) {
  using namespace address_conv_in;
  Ort::KernelContext ctx(context);
  const Ort::ConstValue x = ctx.GetInput(kX), w = ctx.GetInput(kW), b = ctx.GetInput(kB),
                        address = ctx.GetInput(kAddress);
  if (!x || !w || !address) fail_if(kBlockedAddressConv, "inputs X, W and address are required");
  const std::vector<std::int64_t> xd = x.GetTensorTypeAndShapeInfo().GetShape();
  const std::vector<std::int64_t> wd = w.GetTensorTypeAndShapeInfo().GetShape();
  const auto ainfo = address.GetTensorTypeAndShapeInfo();
  const std::vector<std::int64_t> ad = ainfo.GetShape();
  fail_if(kBlockedAddressConv, check_blocked("X", xd));
  if (ainfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)
    fail_if(kBlockedAddressConv, "address must be int32");
  if (ad.size() != 2 || ad[1] != 3)
    fail_if(kBlockedAddressConv, "address must have shape [K, 3], got " + dims_str(ad));
  if (wd.size() != 4 || wd[1] != ad[0] || wd[2] != 1 || wd[3] != 1)
    fail_if(kBlockedAddressConv,
            "W must have shape [Cout, K, 1, 1] = [Cout, " + std::to_string(ad[0]) + ", 1, 1], got " + dims_str(wd));
  BlockedConvShape s;
  s.batch = xd[0];
  s.src_blocks = xd[1];
  s.height = xd[2] - 2;
  s.width = xd[3] - 2;
  s.out_channels = wd[0];
  s.k = ad[0];
  s.stride_h = attrs_.stride_h;
  s.stride_w = attrs_.stride_w;
  std::vector<std::int64_t> bd;
  if (b) bd = b.GetTensorTypeAndShapeInfo().GetShape();
  fail_if(kBlockedAddressConv, check_bias(b ? &bd : nullptr, s.out_channels));
  const std::int32_t* a = address.GetTensorData<std::int32_t>();
  fail_if(kBlockedAddressConv, validate_blocked_addresses(a, s.k, s.src_blocks));

  const std::vector<std::int64_t> yd = {s.batch, blocks_of(s.out_channels), s.out_height() + 2, s.out_width() + 2,
                                        kBlock};
  const float* residual = nullptr;
  if (ctx.GetInputCount() > kResidual) {
    const Ort::ConstValue r = ctx.GetInput(kResidual);
    if (r) {
      const std::vector<std::int64_t> rd = r.GetTensorTypeAndShapeInfo().GetShape();
      if (rd != yd)
        fail_if(kBlockedAddressConv, "residual must have the output's shape " + dims_str(yd) + ", got " + dims_str(rd));
      residual = r.GetTensorData<float>();
    }
  }
  std::vector<float> bias(static_cast<std::size_t>(yd[1] * kBlock), 0.0f);
  if (b) std::copy(b.GetTensorData<float>(), b.GetTensorData<float>() + s.out_channels, bias.begin());
  BlockedWeights per_run;
  const BlockedWeights* weights = &packed_;
  if (packed_.empty() || wd != constant_w_dims_) {
    per_run = BlockedWeights(w.GetTensorData<float>(), s.out_channels, s.k);
    weights = &per_run;
  }
  Ort::UnownedValue y = ctx.GetOutput(0, yd);
  blocked_address_conv(s, x.GetTensorData<float>(), *weights, bias.data(), a, residual, clip_min_, clip_max_,
                       y.GetTensorMutableData<float>(), isa_, ort_parallel_for(ctx));
}

OrtStatusPtr BlockedAddressConvKernel::ComputeV2(OrtKernelContext* context) {
  return cpu_status(api_, true, [&] { Compute(context); });
}

OrtStatusPtr BlockedAddressConvOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  return cpu_status(api, false, [&] { *kernel = new BlockedAddressConvKernel(api, info); });
}

const char* BlockedAddressConvOp::GetName() const { return kBlockedAddressConv; }

ONNXTensorElementDataType BlockedAddressConvOp::GetInputType(std::size_t index) const {
  return index == address_conv_in::kAddress ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32
                                            : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

OrtCustomOpInputOutputCharacteristic BlockedAddressConvOp::GetInputCharacteristic(std::size_t index) const {
  return index == address_conv_in::kB || index == address_conv_in::kResidual ? INPUT_OUTPUT_OPTIONAL
                                                                            : INPUT_OUTPUT_REQUIRED;
}

}  // namespace onnxopt
