#include "cublas_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_common.h"

#ifndef ONNXOPT_CUBLAS_MAJOR
#error "ONNXOPT_CUBLAS_MAJOR must be defined by the build (cmake/Cuda.cmake)"
#endif
#ifndef ONNXOPT_CUBLAS_BUILD_LIBDIR
#define ONNXOPT_CUBLAS_BUILD_LIBDIR ""
#endif
#define ONNXOPT_STR2(x) #x
#define ONNXOPT_STR(x) ONNXOPT_STR2(x)

namespace onnxopt::cuda {
namespace {

const char* const kSoname = "libcublas.so." ONNXOPT_STR(ONNXOPT_CUBLAS_MAJOR);

std::string this_library_dir() {
  Dl_info info{};
  if (!dladdr(reinterpret_cast<void*>(&this_library_dir), &info) || !info.dli_fname) return "";
  std::string path = info.dli_fname;
  const std::size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::vector<std::string> candidates() {
  if (const char* env = std::getenv("ONNXOPT_CUBLAS_LIBRARY"); env && *env) return {env};
  std::vector<std::string> c = {kSoname};
  const std::string here = this_library_dir();
  if (!here.empty()) c.push_back(here + "/../../nvidia/cu" ONNXOPT_STR(ONNXOPT_CUBLAS_MAJOR) "/lib/" + kSoname);
  if (*ONNXOPT_CUBLAS_BUILD_LIBDIR) c.push_back(std::string(ONNXOPT_CUBLAS_BUILD_LIBDIR) + "/" + kSoname);
  return c;
}

template <class F>
void bind(void* lib, F& fn, const char* name, const std::string& path) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn) throw CudaError("onnxopt: " + path + " has no symbol " + name + " (cuBLAS too old?)");
}

std::unique_ptr<CublasApi> load() {
  std::string tried;
  for (const std::string& path : candidates()) {
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* why = dlerror();
      tried += "\n  " + path + ": " + (why ? why : "not loadable");
      continue;
    }
    // The handle is kept for the life of the process: the kernels may run until exit.
    auto api = std::make_unique<CublasApi>();
    bind(lib, api->create, "cublasCreate_v2", path);
    bind(lib, api->destroy, "cublasDestroy_v2", path);
    bind(lib, api->set_stream, "cublasSetStream_v2", path);
    bind(lib, api->set_math_mode, "cublasSetMathMode", path);
    bind(lib, api->sgemm, "cublasSgemm_v2", path);
    bind(lib, api->sgemm_strided_batched, "cublasSgemmStridedBatched", path);
    bind(lib, api->status_string, "cublasGetStatusString", path);
    static std::string opened;
    opened = path;
    api->path = opened.c_str();
    return api;
  }
  throw CudaError(std::string("onnxopt: the CUDA kernels need cuBLAS ") + ONNXOPT_STR(ONNXOPT_CUBLAS_MAJOR) +
                  " (" + kSoname + "), which could not be loaded; tried:" + tried +
                  "\nInstall it with `pip install 'nvidia-cublas>=" ONNXOPT_STR(ONNXOPT_CUBLAS_MAJOR) ",<" +
                  std::to_string(ONNXOPT_CUBLAS_MAJOR + 1) +
                  "'`, put its lib folder on LD_LIBRARY_PATH, or set ONNXOPT_CUBLAS_LIBRARY to the library's path.");
}

}  // namespace

const CublasApi& cublas() {
  static std::mutex mutex;
  static std::unique_ptr<CublasApi> api;
  std::lock_guard<std::mutex> lock(mutex);
  if (!api) api = load();  // a failure is retried on the next call (the environment may change)
  return *api;
}

void check_cublas(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  const char* text = cublas().status_string(status);
  throw CudaError(std::string(what) + ": cuBLAS status " + std::to_string(static_cast<int>(status)) + " (" +
                  (text ? text : "unknown") + ")");
}

}  // namespace onnxopt::cuda
