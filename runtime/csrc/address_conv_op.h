#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <limits>
#include <vector>

#include "address_conv.h"
#include "op_attrs.h"
#include "op_names.h"

namespace onnxopt {

class AddressConvKernel {
 public:
  AddressConvKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(OrtKernelContext* context);

  const OrtApi& api_;
  const GemmIsa& isa_;
  AddressConvAttrs attrs_;
  float clip_min_ = -std::numeric_limits<float>::infinity(), clip_max_ = std::numeric_limits<float>::infinity();
  std::vector<std::int64_t> constant_w_dims_;
  PackedWeights packed_;
};

// Inputs: X [N, Csrc, H, W] float, W [Cout, Cin/group, 1, 1] float, optional B [Cout] float,
// address [Cin, 3] int32, optional residual [N, Cout, Ho, Wo] float.  Attributes group, strides,
// clip_min (default -inf), clip_max (default +inf).  Output [N, Cout, Ho, Wo] = ceil(H/sh), ceil(W/sw):
// Y = min(max(conv + B + residual, clip_min), clip_max).
struct AddressConvOp : FloatOutputOp<AddressConvOp, AddressConvKernel> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const;
  std::size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(std::size_t index) const;
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(std::size_t index) const;
};

}  // namespace onnxopt
