// AddressConv for onnxruntime's CUDA execution provider: gather the displaced, strided input
// channels into [N, Cin, Ho*Wo] scratch (address_conv_impl.cu; skipped for an identity table at
// stride 1), then one cuBLAS strided-batched SGEMM per group (or per image) writing Y, then one
// epilogue kernel: + bias + residual, the clamp of a fused Relu / Clip.  Same inputs, attributes
// and checks as the CPU op (csrc/address_conv_op.h; the checks of both are in csrc/op_attrs.h);
// `address` is taken in host memory (validated there, copied to the device once when it is an
// initializer).
#pragma once

#include <cstdint>

#include "address_conv.h"
#include "gemm_cuda.h"
#include "op_names.h"
#include "op_util.h"

namespace onnxopt::cuda {

class AddressConvCudaKernel {
 public:
  AddressConvCudaKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(OrtKernelContext* context);

  const OrtApi& api_;
  AddressConvAttrs attrs_;
  AddressConvEpilogue clip_;  // the fused Relu / Clip (its residual is per run)
  DeviceTable address_;
  CublasHandles cublas_;
};

struct AddressConvCudaOp : FloatOutputOp<AddressConvCudaOp, AddressConvCudaKernel> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const { return kAddressConv; }
  const char* GetExecutionProviderType() const { return kCudaProvider; }
  std::size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(std::size_t index) const;
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(std::size_t index) const;
  OrtMemType GetInputMemoryType(std::size_t index) const;
};

}  // namespace onnxopt::cuda
