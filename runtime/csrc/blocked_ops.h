// onnxruntime custom ops of the blocked layout (blocked_conv.h): ToBlocked, FromBlocked,
// BlockedAddressConv, BlockedAddressConvPair and BlockedGlobalAveragePool.  Their ONNX-function fallbacks are in runtime/functions.py.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <atomic>
#include <limits>
#include <string>
#include <vector>

#include "blocked_conv.h"
#include "blocked_polyphase.h"
#include "op_attrs.h"

namespace onnxopt {

// ToBlocked: X [N, C, H, W] -> [N, ceil(C/16), H + 2, W + 2, 16].
class ToBlockedKernel {
 public:
  ToBlockedKernel(const OrtApi& api, const OrtKernelInfo*) : api_(api), isa_(gemm_isa()) {}
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  const OrtApi& api_;
  const GemmIsa& isa_;
};

struct ToBlockedOp : FloatOutputOp<ToBlockedOp, ToBlockedKernel> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const;
  std::size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

// FromBlocked: Xb [N, ceil(C/16), H + 2, W + 2, 16] -> [N, C, H, W]; attribute channels = C.
class FromBlockedKernel {
 public:
  FromBlockedKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  const OrtApi& api_;
  const GemmIsa& isa_;
  std::int64_t channels_ = 0;
};

struct FromBlockedOp : FloatOutputOp<FromBlockedOp, FromBlockedKernel> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const;
  std::size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

// BlockedGlobalAveragePool: Xb [N, ceil(C/16), H + 2, W + 2, 16] -> [N, C, 1, 1]; attribute channels = C.
class BlockedGlobalAveragePoolKernel {
 public:
  BlockedGlobalAveragePoolKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  const OrtApi& api_;
  std::int64_t channels_ = 0;
};

struct BlockedGlobalAveragePoolOp : FloatOutputOp<BlockedGlobalAveragePoolOp, BlockedGlobalAveragePoolKernel> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const;
  std::size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(std::size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

// One blocked AddressConv's W, B and address inputs (at the given input indices) and attributes
// strides, clip_min, clip_max (names after `prefix`): W packed once when it is an initializer, a
// constant address table validated once per source block count, row plans kept between runs.
// Safe for concurrent runs (each brings its own Run).
class BlockedStageInputs {
 public:
  // What one run's stage points to besides the inputs: the padded bias, W packed for this run when
  // it is not the constant one.
  struct Run {
    AlignedVector<float> bias;
    BlockedWeights weights;
  };

  BlockedStageInputs(const OrtApi& api, const OrtKernelInfo* info, const char* op, const std::string& prefix,
                     std::size_t w, std::size_t b, std::size_t address);
  // This run's stage reading a source of `src_blocks` stored blocks of `src_lanes` channels (checks
  // shapes and addresses).
  BlockedStage read(Ort::KernelContext& ctx, std::int64_t src_blocks, Run& run, std::int64_t src_lanes = kBlock);
  // W, B and address constant: read() returns the same stage every run.
  bool fixed() const { return fixed_; }

 private:
  const char* op_;
  std::size_t w_, b_, address_;
  AddressConvAttrs attrs_;
  float clip_min_ = -std::numeric_limits<float>::infinity(), clip_max_ = std::numeric_limits<float>::infinity();
  std::vector<std::int64_t> constant_w_dims_;
  BlockedWeights packed_;
  bool constant_address_ = false;
  // W, B (or no B) and address all constant: the stage is made once and read() checks only the
  // source it is given (every input fetch and shape query costs ~1 us per run inside onnxruntime).
  bool fixed_ = false;
  AlignedVector<float> fixed_bias_;
  std::vector<std::int32_t> fixed_address_;
  std::atomic<std::int64_t> validated_blocks_{-1};  // for a constant address: the source it is valid for
  BlockedPlanCache plans_;
};

// BlockedAddressConv: AddressConv (group 1, displacements in [-1, 1]) on blocked tensors.
// Inputs: Xb [N, Cb, H + 2, W + 2, 16], W [Cout, K, 1, 1], optional B [Cout], address [K, 3] int32,
// optional residual (the output's shape).  Attributes strides, clip_min, clip_max as AddressConv.
// Output [N, ceil(Cout/16), Ho + 2, Wo + 2, 16], Ho = ceil(H / sh), Wo = ceil(W / sw).
// BlockedEntryConv (`entry`): ToBlocked + BlockedAddressConv in one (blocked_entry_conv()): X is
// NCHW [N, C, H, W], the address table reads its channels; no residual.
class BlockedAddressConvKernel {
 public:
  BlockedAddressConvKernel(const OrtApi& api, const OrtKernelInfo* info, bool entry = false);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(OrtKernelContext* context);

  const OrtApi& api_;
  const GemmIsa& isa_;
  const bool entry_;
  BlockedStageInputs conv_;
};

struct BlockedAddressConvOp : FloatOutputOp<BlockedAddressConvOp, BlockedAddressConvKernel> {
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(std::size_t index) const;
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const;
  std::size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(std::size_t index) const;
};

// BlockedAddressConvPair: BlockedAddressConv(BlockedAddressConv(Xb, W1, B1, address1), W2, B2,
// address2, residual) without storing the inner result (blocked_address_conv_pair()).  Inputs Xb,
// W1, B1, address1, W2, B2, address2, optional residual; attributes first_strides,
// first_clip_min, first_clip_max of the inner conv, strides, clip_min, clip_max of the outer.
class BlockedAddressConvPairKernel {
 public:
  BlockedAddressConvPairKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(OrtKernelContext* context);

  const OrtApi& api_;
  const GemmIsa& isa_;
  BlockedStageInputs first_, second_;
  PolyphaseCache polyphase_;  // used when both stages are constant
};

struct BlockedAddressConvPairOp : FloatOutputOp<BlockedAddressConvPairOp, BlockedAddressConvPairKernel> {
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(std::size_t index) const;
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const;
  std::size_t GetInputTypeCount() const { return 8; }
  ONNXTensorElementDataType GetInputType(std::size_t index) const;
};

struct BlockedEntryConvOp : FloatOutputOp<BlockedEntryConvOp, BlockedAddressConvKernel> {
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(std::size_t index) const;
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const;
  std::size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(std::size_t index) const;
};

}  // namespace onnxopt
