// PerforatedConv for onnxruntime's CUDA execution provider: im2row of the kept output positions
// only into [N, Cin*kh*kw, P] scratch, one cuBLAS strided-batched SGEMM per group (or per image)
// into [N, Cout, P] scratch, then the fill kernel writes every output position from its kept one,
// adding the bias and clamping to [clip_min, clip_max] (perforated_conv_impl.cu).  Inputs and
// attributes as the CPU op: X, W [Cout, Cin/group, kh, kw], optional B, positions int32 [P], fill
// int32 [Ho*Wo]; Conv's kernel_shape, strides, pads, dilations, group (auto_pad NOTSET or VALID) and
// the fused activation's clip_min / clip_max, checked as there (csrc/op_attrs.h).
// positions and fill are taken in host memory (checked there, copied to the device once when they
// are initializers).
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "gemm_cuda.h"
#include "op_names.h"
#include "op_util.h"

namespace onnxopt::cuda {

class PerforatedConvCudaKernel {
 public:
  PerforatedConvCudaKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(OrtKernelContext* context);

  const OrtApi& api_;
  PerforatedConvAttrs attrs_;
  float clip_min_ = -std::numeric_limits<float>::infinity();  // the fused Relu / Clip
  float clip_max_ = std::numeric_limits<float>::infinity();
  DeviceTable positions_, fill_;
  CublasHandles cublas_;
};

struct PerforatedConvCudaOp : FloatOutputOp<PerforatedConvCudaOp, PerforatedConvCudaKernel> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const { return kPerforatedConv; }
  const char* GetExecutionProviderType() const { return kCudaProvider; }
  std::size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(std::size_t index) const;
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(std::size_t index) const;
  OrtMemType GetInputMemoryType(std::size_t index) const;
};

// Empty when positions [P] (P >= 1, each in [0, plane)) and fill [plane] (each in [0, P)) are a
// valid mask, else what is wrong.
std::string validate_perforation_mask(const std::int32_t* positions, std::int64_t kept, const std::int32_t* fill,
                                      std::int64_t plane);

}  // namespace onnxopt::cuda
