// CUDA plumbing shared by the CUDA kernels' host wrappers: status checks that throw (the
// wrappers turn them into onnxruntime statuses), stream-ordered scratch memory, and device copies
// of the small int32 tables (address, positions, fill) that arrive in host memory.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

namespace onnxopt::cuda {

// A failed CUDA or cuBLAS call (reported as ORT_RUNTIME_EXCEPTION, not as a bad argument).
struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws CudaError("<what>: <error name> (<error text>)") unless err is cudaSuccess.
void check(cudaError_t err, const char* what);

// The device that owns `stream` (onnxruntime's compute stream).
int stream_device(cudaStream_t stream);

// Scratch memory ordered on `stream`: cudaMallocFromPoolAsync from a memory pool of our own per
// device (release threshold: unlimited, so memory is reused between runs instead of going back to
// the driver at every synchronisation), freed with cudaFreeAsync on the same stream.  Stream order
// makes this safe under concurrent Run() calls on different streams, which a buffer kept in the
// kernel would not be.  The pool is not onnxruntime's arena: its memory is not counted by
// onnxruntime's gpu_mem_limit.
class Scratch {
 public:
  Scratch(cudaStream_t stream, std::size_t bytes);
  ~Scratch();  // frees the buffer if release() was not reached (an error is already propagating)
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  // Carves the next `count` elements (256-byte aligned) out of the buffer.
  template <class T>
  T* take(std::size_t count) {
    return static_cast<T*>(take_bytes(count * sizeof(T)));
  }
  void release();  // cudaFreeAsync, status checked
  static std::size_t rounded(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

 private:
  void* take_bytes(std::size_t bytes);
  cudaStream_t stream_;
  char* data_ = nullptr;
  std::size_t size_ = 0, used_ = 0;
};

// An int32 input that onnxruntime hands over in host memory (OrtMemTypeCPUInput).  When the
// input is a constant initializer its values are recorded at kernel creation and copied to each
// device once, on first use; otherwise every run copies it into scratch memory on the stream.
class DeviceTable {
 public:
  DeviceTable() = default;
  ~DeviceTable();
  DeviceTable(const DeviceTable&) = delete;
  DeviceTable& operator=(const DeviceTable&) = delete;
  void set_constant(const std::int32_t* values, std::size_t count);
  // A device pointer holding host[0, count), valid for work enqueued on `stream` before
  // `scratch` is released.
  const std::int32_t* upload(const std::int32_t* host, std::size_t count, cudaStream_t stream, Scratch& scratch);

 private:
  std::vector<std::int32_t> constant_;
  std::mutex mutex_;
  std::vector<std::pair<int, std::int32_t*>> copies_;  // (device, cudaMalloc'ed copy)
};

// The most images one launch sequence handles so that its scratch stays under a fixed budget
// (ONNXOPT_CUDA_SCRATCH_MB, default 256) and the batch fits the grid's z dimension.
std::int64_t batch_chunk(std::int64_t batch, std::size_t bytes_per_image);

}  // namespace onnxopt::cuda
