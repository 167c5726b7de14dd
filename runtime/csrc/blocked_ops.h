// onnxruntime custom ops of the blocked layout (blocked_conv.h): ToBlocked, FromBlocked and
// BlockedAddressConv.  Their ONNX-function fallbacks are in runtime/functions.py.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <limits>
#include <vector>

#include "blocked_conv.h"
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

// BlockedAddressConv: AddressConv (group 1, displacements in [-1, 1]) on blocked tensors.
// Inputs: Xb [N, Cb, H + 2, W + 2, 16], W [Cout, K, 1, 1], optional B [Cout], address [K, 3] int32,
// optional residual (the output's shape).  Attributes strides, clip_min, clip_max as AddressConv.
// Output [N, ceil(Cout/16), Ho + 2, Wo + 2, 16], Ho = ceil(H / sh), Wo = ceil(W / sw).
class BlockedAddressConvKernel {
 public:
  BlockedAddressConvKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(OrtKernelContext* context);

  const OrtApi& api_;
  const GemmIsa& isa_;
  AddressConvAttrs attrs_;
  float clip_min_ = -std::numeric_limits<float>::infinity(), clip_max_ = std::numeric_limits<float>::infinity();
  std::vector<std::int64_t> constant_w_dims_;
  BlockedWeights packed_;
};

struct BlockedAddressConvOp : FloatOutputOp<BlockedAddressConvOp, BlockedAddressConvKernel> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const;
  std::size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(std::size_t index) const;
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(std::size_t index) const;
};

}  // namespace onnxopt
