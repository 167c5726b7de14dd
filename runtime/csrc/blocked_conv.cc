#include "blocked_conv.h"

#include <algorithm>
#include <cstring>

namespace onnxopt {
namespace {

bool use_avx512(const GemmIsa& isa) {
#if defined(ONNXOPT_X86_KERNELS)
  return std::strcmp(isa.name, "avx512f") == 0;
#else
  (void)isa;
  return false;
#endif
}

// The same sums as the AVX-512 tile, one lane at a time (CPUs without AVX-512).
void portable_tile(const BlockedTile& t, int r_count, int f_count) {
  for (int f = 0; f < f_count; ++f) {
    for (int r = 0; r < r_count; ++r) {
      float* out = t.out + f * t.out_stride + kBlock * r;
      const float* res = t.residual ? t.residual + f * t.out_stride + kBlock * r : nullptr;
      for (int lane = 0; lane < kBlock; ++lane) {
        float acc = t.bias[kBlock * f + lane];
        for (int k = 0; k < t.k; ++k) acc += t.in[t.offset[k] + r * t.pos_stride] * t.w[f * t.w_stride + kBlock * k + lane];
        if (res) acc += res[lane];
        if (acc == acc) acc = std::min(t.hi, std::max(t.lo, acc));  // a NaN sum stays NaN
        const bool real = f < f_count - 1 || ((t.last_lanes >> lane) & 1u);
        out[lane] = real ? acc : 0.0f;
      }
    }
  }
}

struct Span {
  std::int64_t first;
  int count;
};

// `total` cut into `parts` runs as equal as possible.
std::vector<Span> balanced(std::int64_t total, std::int64_t parts) {
  std::vector<Span> spans;
  std::int64_t first = 0;
  for (std::int64_t p = 0; p < parts; ++p) {
    const std::int64_t n = total / parts + (p < total % parts ? 1 : 0);
    spans.push_back({first, static_cast<int>(n)});
    first += n;
  }
  return spans;
}

// How a row of output is cut into tiles: groups of channel blocks x runs of positions, the
// combination with the least modelled time (per input channel max(FMAs / 2, loads / 3) cycles
// plus one for the loop, per tile a fixed cost for its bias, epilogue and stores).
struct RowPlan {
  std::vector<Span> groups, runs;
};

RowPlan plan_row(std::int64_t out_blocks, std::int64_t out_width, std::int64_t k) {
  RowPlan best;
  double best_cost = -1;
  for (int f = 1; f <= kBlockedMaxF && f <= out_blocks; ++f) {
    const std::int64_t ngroups = (out_blocks + f - 1) / f;
    const int fmax = static_cast<int>((out_blocks + ngroups - 1) / ngroups);
    const int rmax = blocked_max_r(fmax);
    const std::int64_t nruns = (out_width + rmax - 1) / rmax;
    RowPlan plan{balanced(out_blocks, ngroups), balanced(out_width, nruns)};
    double cost = 0;
    for (const Span& g : plan.groups) {
      for (const Span& r : plan.runs) {
        const double fmas = g.count * r.count, loads = g.count + r.count;
        cost += static_cast<double>(k) * (std::max(fmas / 2, loads / 3) + 1) + 2 * fmas + 10;
      }
    }
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best = plan;
    }
  }
  return best;
}

// Work item `item` of the conversions: one row of one channel block of one image.
struct RowItem {
  std::int64_t row, block, image, c0, count;
  RowItem(std::int64_t item, std::int64_t height, std::int64_t blocks, std::int64_t channels)
      : row(item % height), block(item / height % blocks), image(item / height / blocks), c0(block * kBlock),
        count(std::min(kBlock, channels - c0)) {}
};

void zero(float* p, std::int64_t n) { std::memset(p, 0, static_cast<std::size_t>(n) * sizeof(float)); }

}  // namespace

BlockedWeights::BlockedWeights(const float* w, std::int64_t out_channels, std::int64_t k)
    : data_(static_cast<std::size_t>(blocks_of(out_channels) * k * kBlock), 0.0f), k_(k) {
  for (std::int64_t m = 0; m < out_channels; ++m)
    for (std::int64_t kk = 0; kk < k; ++kk) data_[((m / kBlock) * k + kk) * kBlock + m % kBlock] = w[m * k + kk];
}

std::string validate_blocked_addresses(const std::int32_t* address, std::int64_t k, std::int64_t src_blocks) {
  for (std::int64_t r = 0; r < k; ++r) {
    const std::int64_t src = address[3 * r], dy = address[3 * r + 1], dx = address[3 * r + 2];
    if (src < 0 || src >= src_blocks * kBlock)
      return "address[" + std::to_string(r) + ", 0] = " + std::to_string(src) + " is not a channel of X (X stores " +
             std::to_string(src_blocks * kBlock) + ")";
    if (dy < -1 || dy > 1 || dx < -1 || dx > 1)
      return "address[" + std::to_string(r) + "] displaces by (" + std::to_string(dy) + ", " + std::to_string(dx) +
             "): the blocked layout's border holds displacements in [-1, 1] only";
  }
  return {};
}

void to_blocked(const float* x, std::int64_t batch, std::int64_t channels, std::int64_t height, std::int64_t width,
                float* y, const GemmIsa& isa, const ParallelFor& parallel_for) {
  const std::int64_t cb = blocks_of(channels), hp = height + 2, wp = width + 2;
  const std::int64_t plane = height * width, cell = hp * wp * kBlock;
  if (batch == 0 || cb == 0) return;
  if (plane == 0) {
    zero(y, batch * cb * cell);
    return;
  }
  const bool avx512 = use_avx512(isa);
  parallel_for(static_cast<std::size_t>(batch * cb * height), [&](std::size_t item) {
    const RowItem it(static_cast<std::int64_t>(item), height, cb, channels);
    const std::int64_t row = it.row, b = it.block, n = it.image, c0 = it.c0, count = it.count;
    float* block = y + (n * cb + b) * cell;
    if (row == 0) zero(block, wp * kBlock);
    if (row == height - 1) zero(block + (hp - 1) * wp * kBlock, wp * kBlock);
    float* out = block + (row + 1) * wp * kBlock;
    zero(out, kBlock);
    zero(out + (width + 1) * kBlock, kBlock);
    const float* in = x + (n * channels + c0) * plane + row * width;
    if (avx512) {
      to_blocked_row_avx512(in, plane, count, width, out + kBlock);
      return;
    }
    for (std::int64_t j = 0; j < width; ++j)
      for (std::int64_t c = 0; c < kBlock; ++c) out[(j + 1) * kBlock + c] = c < count ? in[c * plane + j] : 0.0f;
  });
}

void from_blocked(const float* x, std::int64_t batch, std::int64_t channels, std::int64_t height, std::int64_t width,
                  float* y, const GemmIsa& isa, const ParallelFor& parallel_for) {
  const std::int64_t cb = blocks_of(channels), wp = width + 2;
  const std::int64_t plane = height * width, cell = (height + 2) * wp * kBlock;
  if (batch == 0 || plane == 0 || cb == 0) return;
  const bool avx512 = use_avx512(isa);
  parallel_for(static_cast<std::size_t>(batch * cb * height), [&](std::size_t item) {
    const RowItem it(static_cast<std::int64_t>(item), height, cb, channels);
    const std::int64_t row = it.row, b = it.block, n = it.image, c0 = it.c0, count = it.count;
    const float* in = x + (n * cb + b) * cell + ((row + 1) * wp + 1) * kBlock;
    float* out = y + (n * channels + c0) * plane + row * width;
    if (avx512) {
      from_blocked_row_avx512(in, plane, count, width, out);
      return;
    }
    for (std::int64_t c = 0; c < count; ++c)
      for (std::int64_t j = 0; j < width; ++j) out[c * plane + j] = in[j * kBlock + c];
  });
}

void blocked_address_conv(const BlockedConvShape& s, const float* x, const BlockedWeights& weights,
                          const float* bias_padded, const std::int32_t* address, const float* residual,
                          float clip_min, float clip_max, float* y, const GemmIsa& isa,
                          const ParallelFor& parallel_for) {
  const std::int64_t ho = s.out_height(), wo = s.out_width(), mb = blocks_of(s.out_channels);
  const std::int64_t hp = s.height + 2, wp = s.width + 2, hop = ho + 2, wop = wo + 2;
  const std::int64_t in_cell = hp * wp * kBlock, out_cell = hop * wop * kBlock;
  if (s.batch == 0 || mb == 0) return;
  if (ho == 0 || wo == 0) {
    zero(y, s.batch * mb * out_cell);
    return;
  }
  std::vector<std::int64_t> offset(static_cast<std::size_t>(s.k));
  for (std::int64_t r = 0; r < s.k; ++r) {
    const std::int64_t src = address[3 * r];
    offset[static_cast<std::size_t>(r)] =
        (((src / kBlock) * hp + address[3 * r + 1]) * wp + address[3 * r + 2]) * kBlock + src % kBlock;
  }
  const RowPlan plan = plan_row(mb, wo, s.k);
  const bool avx512 = use_avx512(isa);
  const std::int64_t tail = s.out_channels % kBlock;
  const std::uint16_t tail_lanes = tail ? static_cast<std::uint16_t>((1u << tail) - 1u) : 0xFFFF;

  parallel_for(static_cast<std::size_t>(s.batch * ho), [&](std::size_t item) {
    const std::int64_t i = static_cast<std::int64_t>(item) % ho;
    const std::int64_t n = static_cast<std::int64_t>(item) / ho;
    const float* xn = x + n * s.src_blocks * in_cell;
    float* yn = y + n * mb * out_cell;
    const float* rn = residual ? residual + n * mb * out_cell : nullptr;
    for (std::int64_t b = 0; b < mb; ++b) {  // this row's border, and the top and bottom rows
      float* block = yn + b * out_cell;
      if (i == 0) zero(block, wop * kBlock);
      if (i == ho - 1) zero(block + (hop - 1) * wop * kBlock, wop * kBlock);
      zero(block + (i + 1) * wop * kBlock, kBlock);
      zero(block + ((i + 1) * wop + wo + 1) * kBlock, kBlock);
    }
    BlockedTile t;
    t.k = static_cast<int>(s.k);
    t.offset = offset.data();
    t.pos_stride = kBlock * s.stride_w;
    t.w_stride = weights.stride();
    t.out_stride = out_cell;
    t.lo = clip_min;
    t.hi = clip_max;
    for (const Span& g : plan.groups) {
      t.w = weights.block(g.first);
      t.bias = bias_padded + g.first * kBlock;
      t.last_lanes = g.first + g.count == mb ? tail_lanes : 0xFFFF;
      for (const Span& run : plan.runs) {
        const std::int64_t at = ((i + 1) * wop + run.first + 1) * kBlock + g.first * out_cell;
        t.in = xn + ((i * s.stride_h + 1) * wp + run.first * s.stride_w + 1) * kBlock;
        t.out = yn + at;
        t.residual = rn ? rn + at : nullptr;
        if (avx512)
          blocked_tile_avx512(run.count, g.count)(t);
        else
          portable_tile(t, run.count, g.count);
      }
    }
  });
}

}  // namespace onnxopt
