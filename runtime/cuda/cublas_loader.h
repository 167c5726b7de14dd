// cuBLAS, opened at run time instead of linked, so that a CUDA build of libonnxopt_ops still loads
// into a CPU-only onnxruntime on a machine without cuBLAS (its CPU kernels keep working; only
// creating a CUDA kernel needs cuBLAS).
#pragma once

#include <cublas_v2.h>

namespace onnxopt::cuda {

struct CublasApi {
  decltype(&::cublasCreate_v2) create;
  decltype(&::cublasDestroy_v2) destroy;
  decltype(&::cublasSetStream_v2) set_stream;
  decltype(&::cublasSetMathMode) set_math_mode;
  decltype(&::cublasSgemm_v2) sgemm;
  decltype(&::cublasSgemmStridedBatched) sgemm_strided_batched;
  decltype(&::cublasGetStatusString) status_string;
  const char* path;  // what was opened
};

// The cuBLAS entry points, loaded on the first call.  Looks for libcublas.so.<major> (the major
// version of the headers built against) in this order:
//   1. ONNXOPT_CUBLAS_LIBRARY (environment), a full path; nothing else is tried when it is set;
//   2. the plain soname: a cuBLAS that is already loaded (onnxruntime's CUDA provider loads one),
//      else LD_LIBRARY_PATH and the system's linker cache;
//   3. the nvidia-cublas wheel beside this library in site-packages
//      (<site-packages>/onnxopt/runtime/../../nvidia/cu13/lib);
//   4. the cuBLAS folder the library was built with (ONNXOPT_CUBLAS_ROOT at build time).
// Throws CudaError naming every place tried when none loads.
const CublasApi& cublas();

// Throws CudaError("<what>: <status name> (<status text>)") unless status is CUBLAS_STATUS_SUCCESS.
void check_cublas(cublasStatus_t status, const char* what);

}  // namespace onnxopt::cuda
