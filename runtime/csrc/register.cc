// The library's entry points: RegisterCustomOps (called by
// SessionOptions.register_custom_ops_library) and onnxopt_ops_info (for tests and diagnostics).
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "address_conv_op.h"
#include "blocked_ops.h"
#include "blocked_polyphase.h"
#include "gemm.h"
#include "op_names.h"
#include "perforated_conv_op.h"
#ifdef ONNXOPT_WITH_CUDA
#include "address_conv_cuda.h"
#include "perforated_conv_cuda.h"
#endif

#define ONNXOPT_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

onnxopt::AddressConvOp& address_conv_op() {
  static onnxopt::AddressConvOp op;
  return op;
}

onnxopt::PerforatedConvOp& perforated_conv_op() {
  static onnxopt::PerforatedConvOp op;
  return op;
}

onnxopt::ToBlockedOp& to_blocked_op() {
  static onnxopt::ToBlockedOp op;
  return op;
}

onnxopt::FromBlockedOp& from_blocked_op() {
  static onnxopt::FromBlockedOp op;
  return op;
}

onnxopt::BlockedAddressConvOp& blocked_address_conv_op() {
  static onnxopt::BlockedAddressConvOp op;
  return op;
}

onnxopt::BlockedAddressConvPairOp& blocked_address_conv_pair_op() {
  static onnxopt::BlockedAddressConvPairOp op;
  return op;
}

onnxopt::BlockedGlobalAveragePoolOp& blocked_global_average_pool_op() {
  static onnxopt::BlockedGlobalAveragePoolOp op;
  return op;
}

onnxopt::BlockedEntryConvOp& blocked_entry_conv_op() {
  static onnxopt::BlockedEntryConvOp op;
  return op;
}

#ifdef ONNXOPT_WITH_CUDA
// The CUDA variants: same domain and names, GetExecutionProviderType() = CUDAExecutionProvider, so
// onnxruntime picks them for nodes it places on the CUDA provider and the CPU ones elsewhere.
onnxopt::cuda::AddressConvCudaOp& address_conv_cuda_op() {
  static onnxopt::cuda::AddressConvCudaOp op;
  return op;
}

onnxopt::cuda::PerforatedConvCudaOp& perforated_conv_cuda_op() {
  static onnxopt::cuda::PerforatedConvCudaOp op;
  return op;
}
constexpr const char* kCudaInfo = "on";
#else
constexpr const char* kCudaInfo = "off";
#endif

}  // namespace

ONNXOPT_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (!api) {  // onnxruntime older than the API we were built against; API 1 always exists
    return api_base->GetApi(1)->CreateStatus(
        ORT_NOT_IMPLEMENTED, "libonnxopt_ops needs onnxruntime >= 1.21 (C API version 21)");
  }
  Ort::InitApi(api);
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = api->CreateCustomOpDomain(onnxopt::kDomain, &domain)) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &address_conv_op())) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &perforated_conv_op())) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &to_blocked_op())) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &from_blocked_op())) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &blocked_address_conv_op())) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &blocked_address_conv_pair_op())) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &blocked_global_average_pool_op())) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &blocked_entry_conv_op())) return st;
#ifdef ONNXOPT_WITH_CUDA
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &address_conv_cuda_op())) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &perforated_conv_cuda_op())) return st;
#endif
  if (OrtStatus* st = api->AddCustomOpDomain(options, domain)) return st;
  // onnxruntime keeps using the domain after the session options die; it is deliberately never
  // released (released at exit it could outlive onnxruntime itself).
  static std::mutex mutex;
  static std::vector<OrtCustomOpDomain*> domains;
  std::lock_guard<std::mutex> lock(mutex);
  domains.push_back(domain);
  return nullptr;
}

// "domain=ai.onnxopt;version=1;ops=AddressConv,PerforatedConv,ToBlocked,...;gemm=avx512f;cuda=off" (ops: the CPU
// kernels; cuda=on: the library also has the CUDA kernels of AddressConv and PerforatedConv)
ONNXOPT_EXPORT const char* onnxopt_ops_info() {
  static const std::string info = std::string("domain=") + onnxopt::kDomain +
                                  ";version=" + std::to_string(onnxopt::kOpVersion) +
                                  ";ops=" + onnxopt::kAddressConv + "," + onnxopt::kPerforatedConv + "," +
                                  onnxopt::kToBlocked + "," + onnxopt::kFromBlocked + "," +
                                  onnxopt::kBlockedAddressConv + "," + onnxopt::kBlockedAddressConvPair + "," +
                                  onnxopt::kBlockedGlobalAveragePool + "," + onnxopt::kBlockedEntryConv +
                                  ";gemm=" + onnxopt::gemm_isa().name + ";cuda=" + kCudaInfo;
  return info.c_str();
}

// For tests: the phase image's channel blocks of the plan a strided pair would make from these
// tables (first: [k1, 3] producing `mid` channels at strides first_s; second: [k2, 3] at
// strides s), or 0 where no plan applies and the pair runs by rows or whole.
ONNXOPT_EXPORT std::int64_t onnxopt_polyphase_blocks(const std::int32_t* first_address, std::int64_t k1,
                                                     std::int64_t mid, std::int64_t first_sh, std::int64_t first_sw,
                                                     const std::int32_t* second_address, std::int64_t k2,
                                                     std::int64_t sh, std::int64_t sw) {
  const std::vector<float> w(static_cast<std::size_t>(mid * k1), 0.0f);
  const onnxopt::BlockedWeights weights(w.data(), mid, k1);
  const std::vector<float> bias(static_cast<std::size_t>(onnxopt::blocks_of(mid) * onnxopt::kBlock), 0.0f);
  const onnxopt::BlockedStage first{&weights, bias.data(), first_address, mid, k1, first_sh, first_sw, 0.0f, 0.0f};
  const onnxopt::BlockedStage second{&weights, bias.data(), second_address, 0, k2, sh, sw, 0.0f, 0.0f};
  const auto plan = onnxopt::PolyphasePlan::make(first, second);
  return plan ? plan->phase_blocks() : 0;
}
