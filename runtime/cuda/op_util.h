// onnxruntime-side helpers of the CUDA host wrappers: constant inputs, error mapping (attribute
// reading and the checks shared with the CPU ops are in csrc/op_attrs.h).
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_common.h"
#include "op_attrs.h"

namespace onnxopt::cuda {

inline constexpr const char* kCudaProvider = "CUDAExecutionProvider";

// The values of input `index` when it is a constant initializer held in host memory, else empty.
inline std::vector<std::int32_t> constant_int32_input(const OrtApi& api, const OrtKernelInfo* info,
                                                      std::size_t index) {
  int is_constant = 0;
  const OrtValue* v = nullptr;
  if (OrtStatus* st = api.KernelInfoGetConstantInput_tensor(info, index, &is_constant, &v)) {
    api.ReleaseStatus(st);
    return {};
  }
  if (!is_constant || !v) return {};
  Ort::ConstValue cv(v);
  const auto type = cv.GetTensorTypeAndShapeInfo();
  if (type.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) return {};
  const std::int32_t* data = cv.GetTensorData<std::int32_t>();
  return std::vector<std::int32_t>(data, data + type.GetElementCount());
}

// Runs `body`, turning what it throws into an onnxruntime status: bad inputs/attributes
// (std::invalid_argument) -> ORT_INVALID_ARGUMENT, CUDA/cuBLAS failures -> ORT_RUNTIME_EXCEPTION,
// each message prefixed with the op name and "(CUDA)".
template <class Body>
OrtStatusPtr to_status(const OrtApi& api, const char* op, Body&& body) {
  const std::string prefix = std::string(op) + " (CUDA): ";
  try {
    body();
    return nullptr;
  } catch (const Ort::Exception& e) {
    return api.CreateStatus(e.GetOrtErrorCode(), (prefix + e.what()).c_str());
  } catch (const std::invalid_argument& e) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, (prefix + e.what()).c_str());
  } catch (const std::exception& e) {
    return api.CreateStatus(ORT_RUNTIME_EXCEPTION, (prefix + e.what()).c_str());
  }
}

[[noreturn]] inline void bad_input(const std::string& what) { throw std::invalid_argument(what); }

}  // namespace onnxopt::cuda
