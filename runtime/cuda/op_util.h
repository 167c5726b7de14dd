// onnxruntime-side helpers of the CUDA host wrappers: attributes, messages, error mapping.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_common.h"

namespace onnxopt::cuda {

inline constexpr const char* kCudaProvider = "CUDAExecutionProvider";

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

// Empty when the attribute is absent.
inline std::vector<std::int64_t> ints_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name) {
  std::size_t size = 0;
  if (OrtStatus* st = api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size)) {
    api.ReleaseStatus(st);
    return {};
  }
  std::vector<std::int64_t> v(size);
  if (size) Ort::ThrowOnError(api.KernelInfoGetAttributeArray_int64(info, name, v.data(), &size));
  return v;
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
