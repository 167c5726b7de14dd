#include "perforated_conv_cuda.h"

#include <algorithm>
#include <string>

#include "perforated_conv_impl.h"

namespace onnxopt::cuda {
namespace {

using namespace perforated_conv_in;

[[noreturn]] void fail(const std::string& what) { bad_input(what); }

void fail_if(const std::string& error) {
  if (!error.empty()) fail(error);
}

}  // namespace

std::string validate_perforation_mask(const std::int32_t* positions, std::int64_t kept, const std::int32_t* fill,
                                      std::int64_t plane) {
  if (kept < 1) return "positions is empty: at least one output position must be computed";
  for (std::int64_t i = 0; i < kept; ++i)
    if (positions[i] < 0 || positions[i] >= plane)
      return "positions[" + std::to_string(i) + "] = " + std::to_string(positions[i]) + " is outside [0, " +
             std::to_string(plane) + ") (Ho*Wo)";
  for (std::int64_t q = 0; q < plane; ++q)
    if (fill[q] < 0 || fill[q] >= kept)
      return "fill[" + std::to_string(q) + "] = " + std::to_string(fill[q]) + " is outside [0, " +
             std::to_string(kept) + ") (entries of positions)";
  return "";
}

PerforatedConvCudaKernel::PerforatedConvCudaKernel(const OrtApi& api, const OrtKernelInfo* info) : api_(api) {
  fail_if(read_perforated_conv_attrs(api, info, attrs_));
  fail_if(clip_attrs(api, info, clip_min_, clip_max_));
  const std::vector<std::int32_t> positions = constant_int32_input(api, info, kPositions);
  if (!positions.empty()) positions_.set_constant(positions.data(), positions.size());
  const std::vector<std::int32_t> fill = constant_int32_input(api, info, kFill);
  if (!fill.empty()) fill_.set_constant(fill.data(), fill.size());
}

void PerforatedConvCudaKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  PerforatedConvInputs in;
  fail_if(read_perforated_conv_inputs(ctx, attrs_, in));
  const std::vector<std::int64_t>& xd = in.xd;
  const std::vector<std::int64_t>& wd = in.wd;
  const std::vector<std::int64_t>& pd = in.pd;
  const std::vector<std::int64_t>& fd = in.fd;
  const float* bias = in.bias;

  const std::int64_t batch = xd[0], cin = xd[1], height = xd[2], width = xd[3];
  const std::int64_t cout = wd[0], kh = wd[2], kw = wd[3];
  const std::vector<std::int64_t>& strides = attrs_.strides;
  const std::vector<std::int64_t>& pads = attrs_.pads;
  const std::vector<std::int64_t>& dilations = attrs_.dilations;
  const std::int64_t ho = (height + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) / strides[0] + 1;
  const std::int64_t wo = (width + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) / strides[1] + 1;
  if (height + pads[0] + pads[2] < dilations[0] * (kh - 1) + 1 ||
      width + pads[1] + pads[3] < dilations[1] * (kw - 1) + 1 || ho < 1 || wo < 1)
    fail(no_output_positions(xd));
  const std::int64_t plane = ho * wo, kept = pd[0];
  if (fd[0] != plane) fail(mask_size_mismatch(fd[0], xd, ho, wo));
  if (cin > 65535 || cout > 65535) fail("the CUDA kernel supports at most 65535 input and output channels");
  const std::int32_t* p = in.positions.GetTensorData<std::int32_t>();  // host memory (GetInputMemoryType)
  const std::int32_t* f = in.fill.GetTensorData<std::int32_t>();
  fail_if(validate_perforation_mask(p, kept, f, plane));

  Ort::UnownedValue y = ctx.GetOutput(0, std::vector<std::int64_t>{batch, cout, ho, wo});
  float* out = y.GetTensorMutableData<float>();
  if (batch == 0 || cout == 0) return;

  cudaStream_t stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
  const int device = stream_device(stream);
  const std::int64_t k_rows = cin * kh * kw;
  const std::size_t cols_per_image = std::size_t(k_rows * kept), kept_per_image = std::size_t(cout * kept);
  const std::int64_t chunk = batch_chunk(batch, sizeof(float) * (cols_per_image + kept_per_image));
  Scratch scratch(stream, Scratch::rounded(sizeof(float) * cols_per_image * chunk) +
                              Scratch::rounded(sizeof(float) * kept_per_image * chunk) +
                              Scratch::rounded(sizeof(std::int32_t) * kept) +
                              Scratch::rounded(sizeof(std::int32_t) * plane));
  const std::int32_t* positions = positions_.upload(p, std::size_t(kept), stream, scratch);
  const std::int32_t* fills = fill_.upload(f, std::size_t(plane), stream, scratch);
  float* cols = scratch.take<float>(cols_per_image * chunk);
  float* kept_out = scratch.take<float>(kept_per_image * chunk);
  const float* weights = in.w.GetTensorData<float>();

  auto lock = cublas_.lock();
  cublasHandle_t handle = cublas_.bind(stream, device);
  for (std::int64_t n0 = 0; n0 < batch; n0 += chunk) {
    const std::int64_t count = std::min(chunk, batch - n0);
    PerforatedGatherShape g;
    g.batch = count;
    g.in_channels = cin;
    g.height = height;
    g.width = width;
    g.kernel_h = kh;
    g.kernel_w = kw;
    g.stride_h = strides[0];
    g.stride_w = strides[1];
    g.dilation_h = dilations[0];
    g.dilation_w = dilations[1];
    g.pad_top = pads[0];
    g.pad_left = pads[1];
    g.out_width = wo;
    g.kept = kept;
    check(perforated_conv_gather(stream, g, in.x.GetTensorData<float>() + n0 * cin * height * width, positions, cols),
          "perforated_conv_gather launch");
    GroupedGemm gemm;
    gemm.batch = count;
    gemm.group = attrs_.group;
    gemm.m = cout / attrs_.group;
    gemm.k = k_rows / attrs_.group;
    gemm.n = kept;
    gemm.b_image_stride = k_rows * kept;
    gemm.c_image_stride = cout * kept;
    grouped_gemm(handle, gemm, weights, cols, kept_out);
    check(perforated_conv_fill(stream, kept_out, fills, bias, count, cout, kept, plane, clip_min_, clip_max_,
                              out + n0 * cout * plane),
          "perforated_conv_fill launch");
  }
  scratch.release();
}

OrtStatusPtr PerforatedConvCudaKernel::ComputeV2(OrtKernelContext* context) {
  return to_status(api_, kPerforatedConv, [&] { Compute(context); });
}

OrtStatusPtr PerforatedConvCudaOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info,
                                                  void** kernel) const {
  return to_status(api, kPerforatedConv, [&] { *kernel = new PerforatedConvCudaKernel(api, info); });
}

ONNXTensorElementDataType PerforatedConvCudaOp::GetInputType(std::size_t index) const {
  return index >= kPositions ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

OrtCustomOpInputOutputCharacteristic PerforatedConvCudaOp::GetInputCharacteristic(std::size_t index) const {
  return index == kB ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

OrtMemType PerforatedConvCudaOp::GetInputMemoryType(std::size_t index) const {
  return index >= kPositions ? OrtMemTypeCPUInput : OrtMemTypeDefault;
}

}  // namespace onnxopt::cuda
