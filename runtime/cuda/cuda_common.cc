#include "cuda_common.h"

#include <cstdlib>
#include <limits>
#include <map>
#include <string>

namespace onnxopt::cuda {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw CudaError(std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

int stream_device(cudaStream_t stream) {
  int device = -1;
  check(cudaStreamGetDevice(stream, &device), "cudaStreamGetDevice(onnxruntime's compute stream)");
  return device;
}

namespace {

cudaMemPool_t scratch_pool(int device) {
  // One pool per device for the life of the process (never destroyed: at exit the driver may
  // already be gone).
  static std::mutex mutex;
  static std::map<int, cudaMemPool_t> pools;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = pools.find(device);
  if (it != pools.end()) return it->second;
  int supported = 0;
  check(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device),
        "cudaDeviceGetAttribute(cudaDevAttrMemoryPoolsSupported)");
  if (!supported) throw CudaError("device " + std::to_string(device) + " does not support CUDA memory pools");
  cudaMemPoolProps props = {};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t pool = nullptr;
  check(cudaMemPoolCreate(&pool, &props), "cudaMemPoolCreate");
  std::uint64_t keep = std::numeric_limits<std::uint64_t>::max();
  check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep),
        "cudaMemPoolSetAttribute(cudaMemPoolAttrReleaseThreshold)");
  pools.emplace(device, pool);
  return pool;
}

}  // namespace

Scratch::Scratch(cudaStream_t stream, std::size_t bytes) : stream_(stream), size_(bytes) {
  if (bytes == 0) return;
  void* p = nullptr;
  check(cudaMallocFromPoolAsync(&p, bytes, scratch_pool(stream_device(stream)), stream),
        ("cudaMallocFromPoolAsync(" + std::to_string(bytes) + " bytes of scratch)").c_str());
  data_ = static_cast<char*>(p);
}

Scratch::~Scratch() {
  // Only reached with data_ set when an exception is on its way out of the kernel; that error is
  // the one reported, a second one from freeing could not be.
  if (data_) (void)cudaFreeAsync(data_, stream_);
}

void* Scratch::take_bytes(std::size_t bytes) {
  const std::size_t n = rounded(bytes);
  if (used_ + n > size_) throw std::logic_error("onnxopt: scratch buffer too small (kernel bug)");
  void* p = data_ + used_;
  used_ += n;
  return p;
}

void Scratch::release() {
  if (!data_) return;
  char* p = data_;
  data_ = nullptr;
  check(cudaFreeAsync(p, stream_), "cudaFreeAsync(scratch)");
}

DeviceTable::~DeviceTable() {
  // Kernel destruction has no status to report into; a failure here leaks a few bytes at worst.
  for (auto& [device, ptr] : copies_) (void)cudaFree(ptr);
}

void DeviceTable::set_constant(const std::int32_t* values, std::size_t count) {
  constant_.assign(values, values + count);
}

const std::int32_t* DeviceTable::upload(const std::int32_t* host, std::size_t count, cudaStream_t stream,
                                        Scratch& scratch) {
  if (count == 0) return nullptr;
  if (!constant_.empty() && constant_.size() == count) {
    const int device = stream_device(stream);
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [d, ptr] : copies_)
      if (d == device) return ptr;
    int previous = 0;
    check(cudaGetDevice(&previous), "cudaGetDevice");
    check(cudaSetDevice(device), "cudaSetDevice");
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, count * sizeof(std::int32_t));
    if (err == cudaSuccess) err = cudaMemcpy(p, constant_.data(), count * sizeof(std::int32_t), cudaMemcpyHostToDevice);
    const cudaError_t back = cudaSetDevice(previous);
    if (err != cudaSuccess && p) (void)cudaFree(p);  // the copy's error is the one reported
    check(err, "uploading a constant int32 table (cudaMalloc/cudaMemcpy)");
    check(back, "cudaSetDevice (restoring the caller's device)");
    copies_.emplace_back(device, static_cast<std::int32_t*>(p));
    return static_cast<std::int32_t*>(p);
  }
  std::int32_t* d = scratch.take<std::int32_t>(count);
  check(cudaMemcpyAsync(d, host, count * sizeof(std::int32_t), cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync(int32 table to the device)");
  return d;
}

std::int64_t batch_chunk(std::int64_t batch, std::size_t bytes_per_image) {
  std::size_t budget = std::size_t(256) << 20;
  if (const char* mb = std::getenv("ONNXOPT_CUDA_SCRATCH_MB")) {
    const long long v = std::atoll(mb);
    if (v > 0) budget = std::size_t(v) << 20;
  }
  std::int64_t chunk = bytes_per_image ? std::int64_t(budget / bytes_per_image) : batch;
  if (chunk < 1) chunk = 1;
  if (chunk > batch) chunk = batch;
  if (chunk > 65535) chunk = 65535;
  return chunk;
}

}  // namespace onnxopt::cuda
