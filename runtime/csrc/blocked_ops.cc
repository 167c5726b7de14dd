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

// Input X, required and blocked; its dims.
std::vector<std::int64_t> checked_x(const Ort::ConstValue& x, const char* op) {
  if (!x) fail_if(op, "input X is required");
  std::vector<std::int64_t> xd = x.GetTensorTypeAndShapeInfo().GetShape();
  fail_if(op, check_blocked("X", xd));
  return xd;
}

std::int64_t channels_attr(const OrtApi& api, const OrtKernelInfo* info, const char* op) {
  const std::int64_t c = int_attr(api, info, "channels", 0);
  if (c < 1) fail_if(op, "attribute channels must be a positive integer, got " + std::to_string(c));
  return c;
}

// Input 0: a blocked tensor of `channels` channels; its dims.
std::vector<std::int64_t> blocked_input(Ort::KernelContext& ctx, std::int64_t channels, const char* op) {
  const std::vector<std::int64_t> d = checked_x(ctx.GetInput(0), op);
  if (d[1] != blocks_of(channels))
    fail_if(op, "X has " + std::to_string(d[1]) + " channel blocks, channels = " + std::to_string(channels) +
                    " needs " + std::to_string(blocks_of(channels)));
  return d;
}

// The residual input `index` when given: it must have the output's shape `yd`.
const float* residual_input(Ort::KernelContext& ctx, std::size_t index, const std::vector<std::int64_t>& yd,
                            const char* op) {
  const float* residual = nullptr;
  fail_if(op, read_residual(ctx, index, yd, residual));
  return residual;
}

// The shapes of one stage's W [Cout, K, 1, 1], optional B [Cout] and address [K, 3] int32 (W and
// address given): empty when they fit, else the first thing wrong.  `wd` gets W's dims.
std::string check_stage_inputs(const Ort::ConstValue& w, const Ort::ConstValue& b, const Ort::ConstValue& address,
                               std::vector<std::int64_t>& wd) {
  wd = w.GetTensorTypeAndShapeInfo().GetShape();
  const auto ainfo = address.GetTensorTypeAndShapeInfo();
  const std::vector<std::int64_t> ad = ainfo.GetShape();
  if (ainfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) return "address must be int32";
  if (ad.size() != 2 || ad[1] != 3) return "address must have shape [K, 3], got " + dims_str(ad);
  if (wd.size() != 4 || wd[1] != ad[0] || wd[2] != 1 || wd[3] != 1)
    return "W must have shape [Cout, K, 1, 1] = [Cout, " + std::to_string(ad[0]) + ", 1, 1], got " + dims_str(wd);
  std::vector<std::int64_t> bd;
  if (b) bd = b.GetTensorTypeAndShapeInfo().GetShape();
  return check_bias(b ? &bd : nullptr, wd[0]);
}

// B (zeros where absent) padded with zeros to whole blocks of output channels.
AlignedVector<float> padded_bias(const Ort::ConstValue& b, std::int64_t out_channels) {
  AlignedVector<float> bias(static_cast<std::size_t>(blocks_of(out_channels) * kBlock), 0.0f);
  if (b) std::copy(b.GetTensorData<float>(), b.GetTensorData<float>() + out_channels, bias.begin());
  return bias;
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
    : api_(api), isa_(gemm_isa()), channels_(channels_attr(api, info, kFromBlocked)) {}

OrtStatusPtr FromBlockedKernel::ComputeV2(OrtKernelContext* context) {
  return cpu_status(api_, true, [&] {
    Ort::KernelContext ctx(context);
    const std::vector<std::int64_t> d = blocked_input(ctx, channels_, kFromBlocked);
    Ort::UnownedValue y = ctx.GetOutput(0, {d[0], channels_, d[2] - 2, d[3] - 2});
    from_blocked(ctx.GetInput(0).GetTensorData<float>(), d[0], channels_, d[2] - 2, d[3] - 2,
                 y.GetTensorMutableData<float>(), isa_, ort_parallel_for(ctx));
  });
}

OrtStatusPtr FromBlockedOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  return cpu_status(api, false, [&] { *kernel = new FromBlockedKernel(api, info); });
}

const char* FromBlockedOp::GetName() const { return kFromBlocked; }

BlockedGlobalAveragePoolKernel::BlockedGlobalAveragePoolKernel(const OrtApi& api, const OrtKernelInfo* info)
    : api_(api), channels_(channels_attr(api, info, kBlockedGlobalAveragePool)) {}

OrtStatusPtr BlockedGlobalAveragePoolKernel::ComputeV2(OrtKernelContext* context) {
  return cpu_status(api_, true, [&] {
    Ort::KernelContext ctx(context);
    const std::vector<std::int64_t> d = blocked_input(ctx, channels_, kBlockedGlobalAveragePool);
    Ort::UnownedValue y = ctx.GetOutput(0, {d[0], channels_, 1, 1});
    blocked_global_average_pool(ctx.GetInput(0).GetTensorData<float>(), d[0], channels_, d[2] - 2, d[3] - 2,
                                y.GetTensorMutableData<float>(), ort_parallel_for(ctx));
  });
}

OrtStatusPtr BlockedGlobalAveragePoolOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info,
                                                        void** kernel) const {
  return cpu_status(api, false, [&] { *kernel = new BlockedGlobalAveragePoolKernel(api, info); });
}

const char* BlockedGlobalAveragePoolOp::GetName() const { return kBlockedGlobalAveragePool; }

BlockedStageInputs::BlockedStageInputs(const OrtApi& api, const OrtKernelInfo* info, const char* op,
                                       const std::string& prefix, std::size_t w, std::size_t b, std::size_t address)
    : op_(op), w_(w), b_(b), address_(address) {
  fail_if(op, address_conv_attrs(1, ints_attr(api, info, (prefix + "strides").c_str(), {1, 1}), attrs_));
  fail_if(op, clip_attrs(api, info, clip_min_, clip_max_, prefix));
  const Ort::ConstValue wv = constant_input(api, info, w);
  if (wv) {
    const std::vector<std::int64_t> d = wv.GetTensorTypeAndShapeInfo().GetShape();
    if (d.size() == 4 && d[2] == 1 && d[3] == 1 && d[0] > 0 && d[1] > 0) {
      constant_w_dims_ = d;
      packed_ = BlockedWeights(wv.GetTensorData<float>(), d[0], d[1]);
    }
  }
  const Ort::ConstValue av = constant_input(api, info, address);
  constant_address_ = static_cast<bool>(av);
  const Ort::ConstValue bv = constant_input(api, info, b);
  if (packed_.empty() || !av || (!bv && has_input(api, info, b))) return;
  // Shapes that do not fit leave the per-run path to report them.
  std::vector<std::int64_t> wd;
  if (!check_stage_inputs(wv, bv, av, wd).empty()) return;
  fixed_bias_ = padded_bias(bv, wd[0]);
  fixed_address_.assign(av.GetTensorData<std::int32_t>(), av.GetTensorData<std::int32_t>() + 3 * wd[1]);
  fixed_ = true;
}

BlockedStage BlockedStageInputs::read(Ort::KernelContext& ctx, std::int64_t src_blocks, Run& run,
                                      std::int64_t src_lanes) {
  if (fixed_) {
    const std::int64_t k = constant_w_dims_[1];
    if (validated_blocks_.load() != src_blocks) {
      fail_if(op_, validate_blocked_addresses(fixed_address_.data(), k, src_blocks, src_lanes));
      validated_blocks_.store(src_blocks);
    }
    return {&packed_, fixed_bias_.data(), fixed_address_.data(), constant_w_dims_[0], k, attrs_.stride_h,
            attrs_.stride_w, clip_min_, clip_max_, &plans_};
  }
  const Ort::ConstValue w = ctx.GetInput(w_), b = ctx.GetInput(b_), address = ctx.GetInput(address_);
  if (!w || !address) fail_if(op_, "inputs W and address are required");
  std::vector<std::int64_t> wd;
  fail_if(op_, check_stage_inputs(w, b, address, wd));
  const std::int64_t k = wd[1];
  const std::int32_t* a = address.GetTensorData<std::int32_t>();
  if (!constant_address_ || validated_blocks_.load() != src_blocks) {
    fail_if(op_, validate_blocked_addresses(a, k, src_blocks, src_lanes));
    if (constant_address_) validated_blocks_.store(src_blocks);
  }
  run.bias = padded_bias(b, wd[0]);
  const BlockedWeights* weights = &packed_;
  if (packed_.empty() || wd != constant_w_dims_) {
    run.weights = BlockedWeights(w.GetTensorData<float>(), wd[0], k);
    weights = &run.weights;
  }
  return {weights, run.bias.data(), a, wd[0], k, attrs_.stride_h, attrs_.stride_w, clip_min_, clip_max_, &plans_};
}

BlockedAddressConvKernel::BlockedAddressConvKernel(const OrtApi& api, const OrtKernelInfo* info, bool entry)
    : api_(api), isa_(gemm_isa()), entry_(entry),
      conv_(api, info, entry ? kBlockedEntryConv : kBlockedAddressConv, "", address_conv_in::kW, address_conv_in::kB,
            address_conv_in::kAddress) {}

void BlockedAddressConvKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const Ort::ConstValue x = ctx.GetInput(address_conv_in::kX);
  if (entry_) {
    if (!x) fail_if(kBlockedEntryConv, "input X is required");
    const std::vector<std::int64_t> xd = x.GetTensorTypeAndShapeInfo().GetShape();
    if (xd.size() != 4) fail_if(kBlockedEntryConv, "X must be NCHW [N, C, H, W], got " + dims_str(xd));
    BlockedStageInputs::Run run;
    // the channels of X are the stored "blocks" of one lane each (blocked_entry_conv())
    const BlockedStage st = conv_.read(ctx, xd[1], run, 1);
    Ort::UnownedValue y = ctx.GetOutput(0, {xd[0], blocks_of(st.out_channels), ceil_div(xd[2], st.stride_h) + 2,
                                            ceil_div(xd[3], st.stride_w) + 2, kBlock});
    blocked_entry_conv(x.GetTensorData<float>(), xd[0], xd[1], xd[2], xd[3], st, y.GetTensorMutableData<float>(),
                       isa_, ort_parallel_for(ctx));
    return;
  }
  const std::vector<std::int64_t> xd = checked_x(x, kBlockedAddressConv);
  BlockedStageInputs::Run run;
  const BlockedStage st = conv_.read(ctx, xd[1], run);
  const BlockedInput s{xd[0], xd[1], xd[2] - 2, xd[3] - 2};
  const std::vector<std::int64_t> yd = {s.batch, blocks_of(st.out_channels), ceil_div(s.height, st.stride_h) + 2,
                                        ceil_div(s.width, st.stride_w) + 2, kBlock};
  const float* residual = residual_input(ctx, address_conv_in::kResidual, yd, kBlockedAddressConv);
  Ort::UnownedValue y = ctx.GetOutput(0, yd);
  blocked_address_conv(s, x.GetTensorData<float>(), st, residual, y.GetTensorMutableData<float>(), isa_,
                       ort_parallel_for(ctx));
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

OrtStatusPtr BlockedEntryConvOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  return cpu_status(api, false, [&] { *kernel = new BlockedAddressConvKernel(api, info, true); });
}

const char* BlockedEntryConvOp::GetName() const { return kBlockedEntryConv; }

ONNXTensorElementDataType BlockedEntryConvOp::GetInputType(std::size_t index) const {
  return index == address_conv_in::kAddress ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32
                                            : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

OrtCustomOpInputOutputCharacteristic BlockedEntryConvOp::GetInputCharacteristic(std::size_t index) const {
  return index == address_conv_in::kB ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

namespace pair_in {
inline constexpr std::size_t kX = 0, kW1 = 1, kB1 = 2, kAddress1 = 3, kW2 = 4, kB2 = 5, kAddress2 = 6, kResidual = 7;
}

BlockedAddressConvPairKernel::BlockedAddressConvPairKernel(const OrtApi& api, const OrtKernelInfo* info)
    : api_(api), isa_(gemm_isa()),
      first_(api, info, kBlockedAddressConvPair, "first_", pair_in::kW1, pair_in::kB1, pair_in::kAddress1),
      second_(api, info, kBlockedAddressConvPair, "", pair_in::kW2, pair_in::kB2, pair_in::kAddress2) {}

void BlockedAddressConvPairKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const Ort::ConstValue x = ctx.GetInput(pair_in::kX);
  const std::vector<std::int64_t> xd = checked_x(x, kBlockedAddressConvPair);
  BlockedStageInputs::Run run_a, run_b;
  const BlockedStage a = first_.read(ctx, xd[1], run_a);
  const BlockedStage b = second_.read(ctx, blocks_of(a.out_channels), run_b);
  const BlockedInput s{xd[0], xd[1], xd[2] - 2, xd[3] - 2};
  const std::int64_t h2 = ceil_div(ceil_div(s.height, a.stride_h), b.stride_h);
  const std::int64_t w2 = ceil_div(ceil_div(s.width, a.stride_w), b.stride_w);
  const std::vector<std::int64_t> yd = {s.batch, blocks_of(b.out_channels), h2 + 2, w2 + 2, kBlock};
  const float* residual = residual_input(ctx, pair_in::kResidual, yd, kBlockedAddressConvPair);
  Ort::UnownedValue y = ctx.GetOutput(0, yd);
  blocked_address_conv_pair(s, x.GetTensorData<float>(), a, b, residual, y.GetTensorMutableData<float>(), isa_,
                            ort_parallel_for(ctx), first_.fixed() && second_.fixed() ? &polyphase_ : nullptr);
}

OrtStatusPtr BlockedAddressConvPairKernel::ComputeV2(OrtKernelContext* context) {
  return cpu_status(api_, true, [&] { Compute(context); });
}

OrtStatusPtr BlockedAddressConvPairOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info,
                                                      void** kernel) const {
  return cpu_status(api, false, [&] { *kernel = new BlockedAddressConvPairKernel(api, info); });
}

const char* BlockedAddressConvPairOp::GetName() const { return kBlockedAddressConvPair; }

ONNXTensorElementDataType BlockedAddressConvPairOp::GetInputType(std::size_t index) const {
  return index == pair_in::kAddress1 || index == pair_in::kAddress2 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32
                                                                    : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

OrtCustomOpInputOutputCharacteristic BlockedAddressConvPairOp::GetInputCharacteristic(std::size_t index) const {
  return index == pair_in::kB1 || index == pair_in::kB2 || index == pair_in::kResidual ? INPUT_OUTPUT_OPTIONAL
                                                                                       : INPUT_OUTPUT_REQUIRED;
}

}  // namespace onnxopt
