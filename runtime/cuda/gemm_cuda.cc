#include "gemm_cuda.h"

#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cublas_loader.h"
#include "cuda_common.h"

namespace onnxopt::cuda {
namespace {

// ONNXOPT_CUDA_TF32=1 lets cuBLAS use TF32 tensor cores (as onnxruntime's CUDA Conv does by
// default through cuDNN); the default keeps full fp32 products.
bool tf32_requested() {
  const char* v = std::getenv("ONNXOPT_CUDA_TF32");
  return v && std::strcmp(v, "1") == 0;
}

int as_int(std::int64_t v, const char* what) {
  if (v < 0 || v > INT_MAX) throw std::invalid_argument(std::string("GEMM dimension ") + what + " = " +
                                                        std::to_string(v) + " exceeds cuBLAS's int range");
  return static_cast<int>(v);
}

}  // namespace

CublasHandles::CublasHandles() { (void)cublas(); }

CublasHandles::~CublasHandles() {
  // No status can be reported from a kernel's destructor; the driver reclaims the handle's
  // resources with the context in any case.
  for (auto& [device, handle] : handles_) (void)cublas().destroy(handle);
}

cublasHandle_t CublasHandles::bind(cudaStream_t stream, int device) {
  const CublasApi& api = cublas();
  cublasHandle_t handle = nullptr;
  for (auto& [d, h] : handles_)
    if (d == device) handle = h;
  if (!handle) {
    int previous = 0;
    check(cudaGetDevice(&previous), "cudaGetDevice");
    check(cudaSetDevice(device), "cudaSetDevice");
    const cublasStatus_t st = api.create(&handle);
    check(cudaSetDevice(previous), "cudaSetDevice (restoring the caller's device)");
    check_cublas(st, "cublasCreate");
    handles_.emplace_back(device, handle);
    check_cublas(api.set_math_mode(handle, tf32_requested() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
                 "cublasSetMathMode");
  }
  check_cublas(api.set_stream(handle, stream), "cublasSetStream");
  return handle;
}

void grouped_gemm(cublasHandle_t handle, const GroupedGemm& g, const float* a, const float* b, float* c) {
  const CublasApi& api = cublas();
  // Row-major C = A.B is column-major C^T = B^T . A^T: cuBLAS sees an (n x m) result from
  // B^T (n x k, leading dimension n) times A^T (k x m, leading dimension k).
  const int m = as_int(g.n, "positions"), n = as_int(g.m, "Cout/group"), k = as_int(g.k, "K/group");
  const float one = 1.0f, zero = 0.0f;
  const long long a_group = g.m * g.k, b_group = g.k * g.n, c_group = g.m * g.n;
  if (g.batch == 1 && g.group == 1) {
    check_cublas(api.sgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, b, m, a, k, &zero, c, m), "cublasSgemm");
    return;
  }
  if (g.batch >= g.group) {
    for (std::int64_t gi = 0; gi < g.group; ++gi)
      check_cublas(api.sgemm_strided_batched(handle, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, b + gi * b_group, m,
                                             g.b_image_stride, a + gi * a_group, k, 0, &zero, c + gi * c_group, m,
                                             g.c_image_stride, as_int(g.batch, "batch")),
                   "cublasSgemmStridedBatched (over images)");
  } else {
    for (std::int64_t bi = 0; bi < g.batch; ++bi)
      check_cublas(api.sgemm_strided_batched(handle, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one,
                                             b + bi * g.b_image_stride, m, b_group, a, k, a_group, &zero,
                                             c + bi * g.c_image_stride, m, c_group, as_int(g.group, "group")),
                   "cublasSgemmStridedBatched (over groups)");
  }
}

}  // namespace onnxopt::cuda
