// The GEMM both CUDA kernels end in, on cuBLAS: per image and group,
//   C[b][g] (m x n) = A[g] (m x k) . B[b][g] (k x n)
// all row-major: A = the weights [Cout, K] of group g (rows g*m ..), B = the gathered operand of
// image b (rows g*k ..), C = the output of image b (rows g*m ..).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

namespace onnxopt::cuda {

struct GroupedGemm {
  std::int64_t batch = 1, group = 1;
  std::int64_t m = 0, n = 0, k = 0;              // per group: m = Cout/group, k = K/group, n = positions
  std::int64_t b_image_stride = 0, c_image_stride = 0;  // elements between images in B and C
};

// cuBLAS handles of one kernel instance, one per device, created on first use.  cuBLAS handles
// are not safe for concurrent use, so a Compute() holds lock() while it enqueues its work.
class CublasHandles {
 public:
  CublasHandles();  // loads cuBLAS (throws CudaError when it cannot be found)
  ~CublasHandles();
  CublasHandles(const CublasHandles&) = delete;
  CublasHandles& operator=(const CublasHandles&) = delete;
  std::unique_lock<std::mutex> lock() { return std::unique_lock<std::mutex>(mutex_); }
  // The handle for `stream`'s device, bound to `stream`; call with lock() held.
  cublasHandle_t bind(cudaStream_t stream, int device);

 private:
  std::mutex mutex_;
  std::vector<std::pair<int, cublasHandle_t>> handles_;
};

// Enqueues the GEMMs on the handle's stream: one strided-batched call per group (over images)
// or per image (over groups), whichever makes fewer calls.
void grouped_gemm(cublasHandle_t handle, const GroupedGemm& g, const float* a, const float* b, float* c);

}  // namespace onnxopt::cuda
