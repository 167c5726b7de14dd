#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <limits>
#include <vector>

#include "op_attrs.h"
#include "op_names.h"
#include "perforated_conv.h"

namespace onnxopt {

class PerforatedConvKernel {
 public:
  PerforatedConvKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(OrtKernelContext* context);

  const OrtApi& api_;
  const GemmIsa& isa_;
  PerforatedConvAttrs attrs_;
  float clip_min_ = -std::numeric_limits<float>::infinity();  // the fused Relu / Clip
  float clip_max_ = std::numeric_limits<float>::infinity();
  std::vector<std::int64_t> constant_w_dims_;
  PackedWeights packed_;
  PerforatedPlanCache plans_;
};

// Inputs: X [N, Cin, H, W] float, W [Cout, Cin/group, kh, kw] float, optional B [Cout] float,
// positions [P] int32, fill [Ho*Wo] int32.  Attributes as Conv (kernel_shape, strides, pads,
// dilations, group; auto_pad only NOTSET/VALID) and clip_min / clip_max (a fused Relu / Clip,
// default -inf / +inf).  Output: [N, Cout, Ho, Wo] float.
struct PerforatedConvOp : FloatOutputOp<PerforatedConvOp, PerforatedConvKernel> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const;
  std::size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(std::size_t index) const;
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(std::size_t index) const;
};

}  // namespace onnxopt
