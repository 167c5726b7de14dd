#include "blocked_polyphase.h"

#include <map>
#include <tuple>
#include <utility>

namespace onnxopt {
namespace {

std::int64_t floor_mod(std::int64_t a, std::int64_t m) { return ((a % m) + m) % m; }

}  // namespace

std::shared_ptr<const PolyphasePlan> PolyphasePlan::make(const BlockedStage& first, const BlockedStage& second) {
  const std::int64_t sh = second.stride_h, sw = second.stride_w;
  if (sh < 1 || sw < 1 || (sh == 1 && sw == 1) || second.k <= 0 || first.out_channels <= 0) return nullptr;
  // per class (py, px) that occurs (at most nine: displacements are in [-1, 1]), the first conv's
  // channels it reads, in order of first reading; per input channel k of the second, its class
  // and index there
  std::map<std::pair<std::int64_t, std::int64_t>, std::vector<std::int64_t>> members;
  std::map<std::tuple<std::int64_t, std::int64_t, std::int64_t>, std::int64_t> index;  // (py, px, channel) -> index
  std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t>> read_as(static_cast<std::size_t>(second.k));
  for (std::int64_t k = 0; k < second.k; ++k) {
    const std::int64_t src = second.address[3 * k], dy = second.address[3 * k + 1], dx = second.address[3 * k + 2];
    if (src >= first.out_channels) return nullptr;  // a padding channel: zero, whatever the first's clip
    const std::int64_t py = floor_mod(dy, sh), px = floor_mod(dx, sw);
    auto& list = members[{py, px}];
    const auto [at, added] = index.try_emplace({py, px, src}, static_cast<std::int64_t>(list.size()));
    if (added) list.push_back(src);
    read_as[static_cast<std::size_t>(k)] = {py, px, at->second};
  }
  auto plan = std::make_shared<PolyphasePlan>();
  plan->first_sh_ = first.stride_h;
  plan->first_sw_ = first.stride_w;
  plan->sh_ = sh;
  plan->sw_ = sw;
  std::map<std::pair<std::int64_t, std::int64_t>, std::int64_t> phase_block;
  for (const auto& [c, list] : members) {
    phase_block[c] = plan->blocks_;
    plan->blocks_ += blocks_of(static_cast<std::int64_t>(list.size()));
  }
  // the classes' work against the first conv's whole (in double: strides may be anything)
  if (2.0 * static_cast<double>(plan->blocks_) >
      static_cast<double>(blocks_of(first.out_channels)) * static_cast<double>(sh) * static_cast<double>(sw))
    return nullptr;
  for (const auto& [c, list] : members) {
    auto cls = std::make_unique<Class>();
    cls->channels = static_cast<std::int64_t>(list.size());
    cls->phase_block = phase_block[c];
    cls->row_offset = first.stride_h * c.first;
    cls->col_offset = first.stride_w * c.second;
    std::vector<float> rows(static_cast<std::size_t>(cls->channels * first.k));
    cls->bias.assign(static_cast<std::size_t>(blocks_of(cls->channels) * kBlock), 0.0f);
    for (std::int64_t i = 0; i < cls->channels; ++i) {
      const std::int64_t e = list[static_cast<std::size_t>(i)];
      const float* packed = first.weights->block(e / kBlock) + e % kBlock;
      for (std::int64_t kk = 0; kk < first.k; ++kk) rows[static_cast<std::size_t>(i * first.k + kk)] = packed[kk * kBlock];
      cls->bias[static_cast<std::size_t>(i)] = first.bias_padded[e];
    }
    cls->weights = BlockedWeights(rows.data(), cls->channels, first.k);
    plan->classes_.push_back(std::move(cls));
  }
  plan->second_address_.resize(static_cast<std::size_t>(3 * second.k));
  for (std::int64_t k = 0; k < second.k; ++k) {
    const auto [py, px, i] = read_as[static_cast<std::size_t>(k)];
    const std::int64_t dy = second.address[3 * k + 1], dx = second.address[3 * k + 2];
    std::int32_t* row = &plan->second_address_[static_cast<std::size_t>(3 * k)];
    row[0] = static_cast<std::int32_t>(phase_block[{py, px}] * kBlock + i);
    row[1] = static_cast<std::int32_t>((dy - py) / sh);  // exact: dy - py is a multiple of sh
    row[2] = static_cast<std::int32_t>((dx - px) / sw);
  }
  return plan;
}

bool PolyphasePlan::fits(const BlockedInput& in) const {
  return ceil_div(in.height, first_sh_) % sh_ == 0 && ceil_div(in.width, first_sw_) % sw_ == 0;
}

std::size_t PolyphasePlan::phase_floats(const BlockedInput& in) const {
  const std::int64_t h2 = ceil_div(in.height, first_sh_) / sh_, w2 = ceil_div(in.width, first_sw_) / sw_;
  return static_cast<std::size_t>(blocks_ * (h2 + 2) * (w2 + 2) * kBlock);
}

void PolyphasePlan::run(const BlockedInput& in, const float* x, const BlockedStage& first, const BlockedStage& second,
                        const float* residual, float* phase, float* y, const GemmIsa& isa,
                        const ParallelFor& parallel_for) const {
  const std::int64_t h2 = ceil_div(in.height, first_sh_) / sh_, w2 = ceil_div(in.width, first_sw_) / sw_;
  const std::int64_t cell = (h2 + 2) * (w2 + 2) * kBlock;
  for (const auto& cls : classes_) {
    // the first conv at rows first_sh * (sh * i + py) and columns first_sw * (sw * j + px): its own
    // table and the product stride, from X's cell (row_offset, col_offset) on.  Every read is one
    // the first conv whole makes, so it stays within X's border.
    const BlockedStage part{&cls->weights, cls->bias.data(), first.address, cls->channels, first.k,
                            first_sh_ * sh_, first_sw_ * sw_, first.lo, first.hi, &cls->plans};
    const float* from = x + (cls->row_offset * (in.width + 2) + cls->col_offset) * in.lanes;
    blocked_address_conv(in, from, part, nullptr, phase + cls->phase_block * cell, isa, parallel_for);
  }
  const BlockedStage rest{second.weights, second.bias_padded, second_address_.data(), second.out_channels,
                          second.k, 1, 1, second.lo, second.hi, &second_plans_};
  blocked_address_conv({1, blocks_, h2, w2}, phase, rest, residual, y, isa, parallel_for);
}

std::shared_ptr<const PolyphasePlan> PolyphaseCache::get(const BlockedStage& first, const BlockedStage& second) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!made_) {
    plan_ = PolyphasePlan::make(first, second);
    made_ = true;
  }
  return plan_;
}

}  // namespace onnxopt
