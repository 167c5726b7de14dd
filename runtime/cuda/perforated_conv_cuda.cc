#include "perforated_conv_cuda.h"

#include <algorithm>
#include <string>

#include "perforated_conv_impl.h"

namespace onnxopt::cuda {
namespace {

constexpr std::size_t kX = 0, kW = 1, kB = 2, kPositions = 3, kFill = 4;

[[noreturn]] void fail(const std::string& what) { bad_input(what); }

bool all_positive(const std::vector<std::int64_t>& v) {
  return std::all_of(v.begin(), v.end(), [](std::int64_t x) { return x >= 1; });
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
  group_ = int_attr(api, info, "group", 1);
  kernel_shape_ = ints_attr(api, info, "kernel_shape");
  strides_ = ints_attr(api, info, "strides");
  pads_ = ints_attr(api, info, "pads");
  dilations_ = ints_attr(api, info, "dilations");
  if (strides_.empty()) strides_ = {1, 1};
  if (dilations_.empty()) dilations_ = {1, 1};
  if (pads_.empty()) pads_ = {0, 0, 0, 0};
  const std::string auto_pad = string_attr(api, info, "auto_pad");
  if (!auto_pad.empty() && auto_pad != "NOTSET" && auto_pad != "VALID")
    fail("auto_pad " + auto_pad + " is not supported; give explicit pads");
  if (group_ < 1) fail("attribute group must be >= 1, got " + std::to_string(group_));
  if (strides_.size() != 2 || !all_positive(strides_))
    fail("attribute strides must be two positive integers, got " + dims_str(strides_));
  if (dilations_.size() != 2 || !all_positive(dilations_))
    fail("attribute dilations must be two positive integers, got " + dims_str(dilations_));
  if (pads_.size() != 4 || pads_[0] < 0 || pads_[1] < 0 || pads_[2] < 0 || pads_[3] < 0)
    fail("attribute pads must be four non-negative integers, got " + dims_str(pads_));
  if (!kernel_shape_.empty() && (kernel_shape_.size() != 2 || !all_positive(kernel_shape_)))
    fail("attribute kernel_shape must be two positive integers, got " + dims_str(kernel_shape_));
  const std::vector<std::int32_t> positions = constant_int32_input(api, info, kPositions);
  if (!positions.empty()) positions_.set_constant(positions.data(), positions.size());
  const std::vector<std::int32_t> fill = constant_int32_input(api, info, kFill);
  if (!fill.empty()) fill_.set_constant(fill.data(), fill.size());
}

void PerforatedConvCudaKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const Ort::ConstValue x = ctx.GetInput(kX);
  const Ort::ConstValue w = ctx.GetInput(kW);
  const Ort::ConstValue b = ctx.GetInput(kB);
  const Ort::ConstValue pos = ctx.GetInput(kPositions);
  const Ort::ConstValue fill = ctx.GetInput(kFill);
  if (!x || !w || !pos || !fill) fail("inputs X, W, positions and fill are required");

  const std::vector<std::int64_t> xd = x.GetTensorTypeAndShapeInfo().GetShape();
  const std::vector<std::int64_t> wd = w.GetTensorTypeAndShapeInfo().GetShape();
  const auto pinfo = pos.GetTensorTypeAndShapeInfo();
  const auto finfo = fill.GetTensorTypeAndShapeInfo();
  if (xd.size() != 4) fail("X must be 4-D [N, C, H, W], got " + dims_str(xd));
  if (wd.size() != 4) fail("W must be 4-D [Cout, Cin/group, kh, kw], got " + dims_str(wd));
  if (pinfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 ||
      finfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)
    fail("positions and fill must be int32");
  const std::vector<std::int64_t> pd = pinfo.GetShape(), fd = finfo.GetShape();
  if (pd.size() != 1) fail("positions must be 1-D [P], got " + dims_str(pd));
  if (fd.size() != 1) fail("fill must be 1-D [Ho*Wo], got " + dims_str(fd));

  const std::int64_t batch = xd[0], cin = xd[1], height = xd[2], width = xd[3];
  const std::int64_t cout = wd[0], kh = wd[2], kw = wd[3];
  if (!kernel_shape_.empty() && (kernel_shape_[0] != kh || kernel_shape_[1] != kw))
    fail("kernel_shape " + dims_str(kernel_shape_) + " does not match W " + dims_str(wd));
  if (cin % group_ != 0 || wd[1] != cin / group_)
    fail("W " + dims_str(wd) + " does not fit X " + dims_str(xd) + " with group " + std::to_string(group_) +
         " (need W[1] = Cin/group)");
  if (cout % group_ != 0)
    fail("Cout = " + std::to_string(cout) + " is not divisible by group = " + std::to_string(group_));
  const float* bias = nullptr;
  if (b) {
    const std::vector<std::int64_t> bd = b.GetTensorTypeAndShapeInfo().GetShape();
    if (bd.size() != 1 || bd[0] != cout)
      fail("B must have shape [Cout] = [" + std::to_string(cout) + "], got " + dims_str(bd));
    bias = b.GetTensorData<float>();
  }
  const std::int64_t ho = (height + pads_[0] + pads_[2] - dilations_[0] * (kh - 1) - 1) / strides_[0] + 1;
  const std::int64_t wo = (width + pads_[1] + pads_[3] - dilations_[1] * (kw - 1) - 1) / strides_[1] + 1;
  if (height + pads_[0] + pads_[2] < dilations_[0] * (kh - 1) + 1 ||
      width + pads_[1] + pads_[3] < dilations_[1] * (kw - 1) + 1 || ho < 1 || wo < 1)
    fail("X " + dims_str(xd) + " is smaller than the (dilated) kernel: no output positions");
  const std::int64_t plane = ho * wo, kept = pd[0];
  if (fd[0] != plane)
    fail("the mask was made for " + std::to_string(fd[0]) + " output positions (fill has that many entries) "
         "but X " + dims_str(xd) + " gives " + std::to_string(ho) + " x " + std::to_string(wo) + " = " +
         std::to_string(plane) + "; perforate the model for this input size");
  if (cin > 65535 || cout > 65535) fail("the CUDA kernel supports at most 65535 input and output channels");
  const std::int32_t* p = pos.GetTensorData<std::int32_t>();  // host memory (GetInputMemoryType)
  const std::int32_t* f = fill.GetTensorData<std::int32_t>();
  const std::string bad = validate_perforation_mask(p, kept, f, plane);
  if (!bad.empty()) fail(bad);

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
  const float* weights = w.GetTensorData<float>();

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
    g.stride_h = strides_[0];
    g.stride_w = strides_[1];
    g.dilation_h = dilations_[0];
    g.dilation_w = dilations_[1];
    g.pad_top = pads_[0];
    g.pad_left = pads_[1];
    g.out_width = wo;
    g.kept = kept;
    check(perforated_conv_gather(stream, g, x.GetTensorData<float>() + n0 * cin * height * width, positions, cols),
          "perforated_conv_gather launch");
    GroupedGemm gemm;
    gemm.batch = count;
    gemm.group = group_;
    gemm.m = cout / group_;
    gemm.k = k_rows / group_;
    gemm.n = kept;
    gemm.b_image_stride = k_rows * kept;
    gemm.c_image_stride = cout * kept;
    grouped_gemm(handle, gemm, weights, cols, kept_out);
    check(perforated_conv_fill(stream, kept_out, fills, bias, count, cout, kept, plane, out + n0 * cout * plane),
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
