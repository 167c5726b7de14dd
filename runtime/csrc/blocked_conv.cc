#include "blocked_conv.h"

#include "blocked_polyphase.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <utility>

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
        float acc = t.bias ? t.bias[kBlock * f + lane] : out[lane];
        for (int k = 0; k < t.k; ++k) acc += t.src[k][t.first + r * t.pos_stride] * t.w[f * t.w_stride + kBlock * k + lane];
        if (res) acc += res[lane];
        if (acc == acc) acc = std::min(t.hi, std::max(t.lo, acc));  // a NaN sum stays NaN
        const bool real = f < f_count - 1 || ((t.last_lanes >> lane) & 1u);
        out[lane] = real ? acc : 0.0f;
      }
    }
  }
}

// Uninitialised floats on a cache line (a scratch's users write all of it before they read it).
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { release(); }
  float* at_least(std::size_t floats) {
    if (size_ < floats) {
      release();
      data_ = static_cast<float*>(::operator new(floats * sizeof(float), std::align_val_t(64)));
      size_ = floats;
    }
    return data_;
  }

 private:
  void release() {
    if (data_) ::operator delete(data_, std::align_val_t(64));
    data_ = nullptr;
    size_ = 0;
  }
  float* data_ = nullptr;
  std::size_t size_ = 0;
};

// The calling thread's scratch (a pair's first conv computed whole, an entry conv's padded image):
// kept between runs for the same reason as the ring up to 16 MiB, larger ones (big maps) in
// `local`, for this run.  One user at a time per thread (the ops that use it do not nest).
float* thread_scratch(std::size_t floats, ScratchBuffer& local) {
  constexpr std::size_t kKeptFloats = std::size_t{4} << 20;
  thread_local ScratchBuffer kept;
  return (floats <= kKeptFloats ? kept : local).at_least(floats);
}

using Span = BlockedRowPlan::Span;

// This thread's ring of a pair (at least `floats` long, contents undefined).  Kept between runs: a
// fresh ~50 KiB allocation per run came back from the kernel with its pages faulted in again
// (glibc trims the heap top on free), 5-10 us per pair inside onnxruntime.
float* ring_scratch(std::size_t floats) {
  thread_local AlignedVector<float> ring;
  if (ring.size() < floats) ring = AlignedVector<float>(floats);
  return ring.data();
}

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
    const std::int64_t ngroups = ceil_div(out_blocks, f);
    const int fmax = static_cast<int>(ceil_div(out_blocks, ngroups));
    const int rmax = blocked_max_r(fmax);
    const std::int64_t nruns = ceil_div(out_width, rmax);
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

// Where one output row of a blocked conv goes: position 0's cell in block 0, blocks `stride`
// apart, and the residual in the same layout.  The tensor form also zeroes the row's border cells
// (and the top and bottom rows with the first and last row).
struct OutRow {
  float* out;
  std::int64_t stride;
  const float* residual = nullptr;
  OutRow(float* row, std::int64_t block_stride) : out(row), stride(block_stride) {}
  OutRow(float* y, const float* res, std::int64_t blocks, std::int64_t ho, std::int64_t wo, std::int64_t i)
      : out(y + ((i + 1) * (wo + 2) + 1) * kBlock), stride((ho + 2) * (wo + 2) * kBlock),
        residual(res ? res + ((i + 1) * (wo + 2) + 1) * kBlock : nullptr) {
    const std::int64_t wop = wo + 2;
    for (std::int64_t b = 0; b < blocks; ++b) {
      float* block = y + b * stride;
      if (i == 0) zero(block, wop * kBlock);
      if (i == ho - 1) zero(block + (ho + 1) * wop * kBlock, wop * kBlock);
      zero(block + (i + 1) * wop * kBlock, kBlock);
      zero(block + ((i + 1) * wop + wo + 1) * kBlock, kBlock);
    }
  }
};

// Where the row order stops paying.  A row of tiles reads all of a conv's weights; past
// kChunkedWeightBytes they no longer stay in L1 from one row to the next, and such a conv runs
// channel group by channel group over bands of kBandRows rows, its input channels in chunks of
// kChunk (24-32 KiB of weights for 3-4 blocks), so that a chunk's weights serve a whole band
// (ShiftNet w64 @56, 256 -> 768 @14 and back in a net, one thread: 1.05 -> 1.00 of onnxruntime's
// NCHWc convs).  A pair whose two convs' weights pass kPairWeightBytes reads them all once per
// output row from L2, where they do not fit beside the data (2 x 768 KiB at 14x14: a pair took
// 1.16x onnxruntime's two convs); it computes its first conv over the whole image instead.
constexpr std::int64_t kChunkedWeightBytes = 64 * 1024;
constexpr std::int64_t kChunk = 128;
constexpr std::int64_t kBandRows = 8;
constexpr std::int64_t kMinItems = 8;
constexpr std::int64_t kPairWeightBytes = 1024 * 1024;

std::int64_t weight_bytes(const BlockedStage& st) {
  return blocks_of(st.out_channels) * st.k * kBlock * static_cast<std::int64_t>(sizeof(float));
}

// Whether a pair computes its first conv over the whole image, then the second, rather than row by
// row through the ring.  By rows, each output row reads the first conv's weights once per inner row
// it needs (the second conv's row stride) and the second's once; past L1 they come from L2, at
// `intensity` FLOPs per byte (w/2 for an unstrided second conv, w its output row width; strides are
// counted).  Measured one thread, C++
// loop, ring vs whole (us): 128 -> 384 -> 128 @8 105 vs 75 (intensity 4), 256 -> 768 -> 256 @7
// 270 vs 248 (3.5), @12 181 vs 181 (6), 128 -> 384 -> 128 @16 313 vs 311 (8), @28 921 vs 956 (14),
// 64 -> 192 -> 64 @56 962 vs 1172 (28); past 1 MiB the two convs' weights and the data do not fit
// a 2 MiB L2 together (256 -> 768 -> 256 @14: 1003-1018 vs 968-982, strided 618-645 vs 609-619).
bool whole_first_conv(const BlockedStage& first, const BlockedStage& second, std::int64_t w1, std::int64_t w2) {
  const std::int64_t b1 = weight_bytes(first), b2 = weight_bytes(second), bytes = b1 + b2;
  const double flops = 0.5 * static_cast<double>(second.stride_h * b1 * w1 + b2 * w2);  // 2 per weight float
  const double intensity = flops / static_cast<double>(second.stride_h * b1 + b2);
  return bytes > kPairWeightBytes || (bytes > kChunkedWeightBytes && intensity < 6.5);
}

// Rows [i0, i1) of one output image of a blocked conv: the cell of (row i0, position 0) in block
// 0, rows `row` and blocks `block` floats apart, and the residual in the same layout.
struct OutPlane {
  float* out;
  const float* residual;
  std::int64_t row, block;
};

// Zeroes the border cells of rows [i0, i1) of blocks [b0, b0 + count) of one blocked image (ho x
// wo inside), and its top / bottom border row with the first / last row.
void zero_border(float* image, std::int64_t b0, std::int64_t count, std::int64_t ho, std::int64_t wo,
                 std::int64_t i0, std::int64_t i1) {
  const std::int64_t wop = wo + 2, cell = (ho + 2) * wop * kBlock;
  for (std::int64_t b = b0; b < b0 + count; ++b) {
    float* block = image + b * cell;
    if (i0 == 0) zero(block, wop * kBlock);
    if (i1 == ho) zero(block + (ho + 1) * wop * kBlock, wop * kBlock);
    for (std::int64_t i = i0 + 1; i <= i1; ++i) {
      zero(block + i * wop * kBlock, kBlock);
      zero(block + (i * wop + wo + 1) * kBlock, kBlock);
    }
  }
}

// One blocked AddressConv as rows of tiles.  A source row is given per displacement dy in
// {-1, 0, 1} as the cell of its position 0 in block 0, blocks `src_block_stride` apart.
class StageRows {
 public:
  StageRows(const BlockedStage& st, std::int64_t out_width, std::int64_t src_block_stride, bool avx512,
            std::int64_t src_lanes = kBlock)
      : st_(st),
        plan_(st.plans ? st.plans->get(st.out_channels, st.address, st.k, out_width, src_block_stride, src_lanes)
                       : std::make_shared<const BlockedRowPlan>(st.out_channels, st.address, st.k, out_width,
                                                                src_block_stride, src_lanes)),
        pos_stride_(src_lanes * st.stride_w),
        avx512_(avx512) {}

  // Per input channel, its read for output position 0 of a row whose sources (dy = -1, 0, 1) are
  // in[0..2]; a row `offset` floats further on reads src[k] + offset.
  std::vector<const float*> reads(const float* const in[3]) const {
    std::vector<const float*> src(plan_->row_of.size());
    for (std::size_t r = 0; r < src.size(); ++r) src[r] = in[plan_->row_of[r]] + plan_->within[r];
    return src;
  }

  // `rows` output rows (sources `row_step` floats apart from `offset`) for the channel group `gi`
  // only, the input channels in chunks of `chunk`: the partial sums go through the output and the
  // epilogue runs with the last chunk.  The same sums in the same order as run(), so the same bits.
  void run_plane(const std::vector<const float*>& src, std::int64_t offset, std::int64_t row_step,
                 std::int64_t rows, std::size_t gi, const OutPlane& out, std::int64_t chunk) const {
    const std::int64_t mb = blocks_of(st_.out_channels);
    const Span& g = plan_->groups[gi];
    BlockedTile t;
    t.pos_stride = pos_stride_;
    t.w_stride = st_.weights->stride();
    t.out_stride = out.block;
    for (std::int64_t k0 = 0; k0 == 0 || k0 < st_.k; k0 += chunk) {  // once at least: K = 0 gives the bias
      const std::int64_t kn = std::min(chunk, st_.k - k0);
      const bool first = k0 == 0, last = k0 + kn == st_.k;
      t.k = static_cast<int>(kn);
      t.src = src.data() + k0;
      t.w = st_.weights->block(g.first) + kBlock * k0;
      t.bias = first ? st_.bias_padded + g.first * kBlock : nullptr;
      t.lo = last ? st_.lo : -INFINITY;
      t.hi = last ? st_.hi : INFINITY;
      t.last_lanes = last && g.first + g.count == mb ? plan_->tail_lanes : 0xFFFF;
      for (std::int64_t i = 0; i < rows; ++i) {
        for (const Span& run : plan_->runs) {
          const std::int64_t at = i * out.row + run.first * kBlock + g.first * out.block;
          t.first = offset + i * row_step + run.first * t.pos_stride;
          t.out = out.out + at;
          t.residual = last && out.residual ? out.residual + at : nullptr;
          if (avx512_)
            blocked_tile_avx512(run.count, g.count, t.pos_stride)(t);
          else
            portable_tile(t, run.count, g.count);
        }
      }
    }
  }

  std::size_t groups() const { return plan_->groups.size(); }
  const Span& group(std::size_t gi) const { return plan_->groups[gi]; }

  // One output row: every group, all input channels at once (one chunk).
  void run(const std::vector<const float*>& src, std::int64_t offset, const OutRow& out) const {
    const OutPlane plane{out.out, out.residual, 0, out.stride};
    for (std::size_t gi = 0; gi < plan_->groups.size(); ++gi) run_plane(src, offset, 0, 1, gi, plane, std::max<std::int64_t>(st_.k, 1));
  }

 private:
  BlockedStage st_;
  std::shared_ptr<const BlockedRowPlan> plan_;
  std::int64_t pos_stride_;  // floats between consecutive output positions' reads
  bool avx512_;
};

}  // namespace

BlockedRowPlan::BlockedRowPlan(std::int64_t out_channels_, const std::int32_t* address_, std::int64_t k,
                               std::int64_t out_width_, std::int64_t src_block_stride_, std::int64_t src_lanes_)
    : out_channels(out_channels_), out_width(out_width_), src_block_stride(src_block_stride_), src_lanes(src_lanes_),
      address(address_, address_ + 3 * k) {
  RowPlan plan = plan_row(blocks_of(out_channels), out_width, k);
  groups = std::move(plan.groups);
  runs = std::move(plan.runs);
  const std::int64_t tail = out_channels % kBlock;
  tail_lanes = tail ? static_cast<std::uint16_t>((1u << tail) - 1u) : 0xFFFF;
  row_of.resize(static_cast<std::size_t>(k));
  within.resize(static_cast<std::size_t>(k));
  for (std::int64_t r = 0; r < k; ++r) {
    const std::int64_t src = address_[3 * r];
    row_of[static_cast<std::size_t>(r)] = address_[3 * r + 1] + 1;
    within[static_cast<std::size_t>(r)] =
        (src / src_lanes) * src_block_stride + address_[3 * r + 2] * src_lanes + src % src_lanes;
  }
}

bool BlockedRowPlan::made_for(std::int64_t out_channels_, const std::int32_t* address_, std::int64_t k,
                              std::int64_t out_width_, std::int64_t src_block_stride_, std::int64_t src_lanes_) const {
  return out_channels == out_channels_ && out_width == out_width_ && src_block_stride == src_block_stride_ &&
         src_lanes == src_lanes_ &&
         static_cast<std::int64_t>(address.size()) == 3 * k &&
         std::equal(address.begin(), address.end(), address_);
}

std::shared_ptr<const BlockedRowPlan> BlockedPlanCache::get(std::int64_t out_channels, const std::int32_t* address,
                                                            std::int64_t k, std::int64_t out_width,
                                                            std::int64_t src_block_stride, std::int64_t src_lanes) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!last_ || !last_->made_for(out_channels, address, k, out_width, src_block_stride, src_lanes))
    last_ = std::make_shared<const BlockedRowPlan>(out_channels, address, k, out_width, src_block_stride, src_lanes);
  return last_;
}

BlockedWeights::BlockedWeights(const float* w, std::int64_t out_channels, std::int64_t k)
    : data_(static_cast<std::size_t>(blocks_of(out_channels) * k * kBlock), 0.0f), k_(k) {
  for (std::int64_t m = 0; m < out_channels; ++m)
    for (std::int64_t kk = 0; kk < k; ++kk) data_[((m / kBlock) * k + kk) * kBlock + m % kBlock] = w[m * k + kk];
}

std::string validate_blocked_addresses(const std::int32_t* address, std::int64_t k, std::int64_t src_blocks,
                                      std::int64_t src_lanes) {
  for (std::int64_t r = 0; r < k; ++r) {
    const std::int64_t src = address[3 * r], dy = address[3 * r + 1], dx = address[3 * r + 2];
    if (src < 0 || src >= src_blocks * src_lanes)
      return "address[" + std::to_string(r) + ", 0] = " + std::to_string(src) + " is not a channel of X (X stores " +
             std::to_string(src_blocks * src_lanes) + ")";
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

void blocked_global_average_pool(const float* x, std::int64_t batch, std::int64_t channels, std::int64_t height,
                                 std::int64_t width, float* y, const ParallelFor& parallel_for) {
  const std::int64_t cb = blocks_of(channels), wp = width + 2, cell = (height + 2) * wp * kBlock;
  if (batch == 0 || cb == 0) return;
  const float scale = height * width > 0 ? 1.0f / static_cast<float>(height * width) : 0.0f;
  parallel_for(static_cast<std::size_t>(batch * cb), [&](std::size_t item) {
    const std::int64_t b = static_cast<std::int64_t>(item) % cb, n = static_cast<std::int64_t>(item) / cb;
    float sum[kBlock] = {};
    const float* block = x + (n * cb + b) * cell;
    for (std::int64_t i = 1; i <= height; ++i) {
      const float* row = block + (i * wp + 1) * kBlock;
      for (std::int64_t j = 0; j < width; ++j)
        for (int lane = 0; lane < kBlock; ++lane) sum[lane] += row[j * kBlock + lane];
    }
    const std::int64_t c0 = b * kBlock, count = std::min(kBlock, channels - c0);
    for (std::int64_t lane = 0; lane < count; ++lane)
      y[n * channels + c0 + lane] = height * width > 0 ? sum[lane] * scale : std::nanf("");
  });
}

void blocked_address_conv(const BlockedInput& s, const float* x, const BlockedStage& stage, const float* residual,
                          float* y, const GemmIsa& isa, const ParallelFor& parallel_for) {
  const std::int64_t ho = ceil_div(s.height, stage.stride_h), wo = ceil_div(s.width, stage.stride_w);
  const std::int64_t mb = blocks_of(stage.out_channels);
  const std::int64_t hp = s.height + 2, wp = s.width + 2, out_cell = (ho + 2) * (wo + 2) * kBlock, lanes = s.lanes;
  if (s.batch == 0 || mb == 0) return;
  if (ho == 0 || wo == 0) {
    zero(y, s.batch * mb * out_cell);
    return;
  }
  const StageRows rows(stage, wo, hp * wp * lanes, use_avx512(isa), lanes);
  const float* in[3];  // output row 0 of image 0 reads padded rows 0, 1, 2
  for (int d = 0; d < 3; ++d) in[d] = x + (d * wp + 1) * lanes;
  const std::vector<const float*> src = rows.reads(in);
  if (weight_bytes(stage) > kChunkedWeightBytes) {
    // bands of at most kBandRows rows, thinner (down to one row) where an image would otherwise
    // make fewer than kMinItems work items (one group, few rows: the row order had one per row)
    const std::int64_t ng = static_cast<std::int64_t>(rows.groups());
    const std::int64_t band_rows =
        ceil_div(ho, std::min(ho, std::max(ceil_div(ho, kBandRows), ceil_div(kMinItems, ng))));
    const std::int64_t nbands = ceil_div(ho, band_rows);
    parallel_for(static_cast<std::size_t>(s.batch * ng * nbands), [&](std::size_t item) {
      const std::int64_t band = static_cast<std::int64_t>(item) % nbands;
      const std::int64_t gi = static_cast<std::int64_t>(item) / nbands % ng;
      const std::int64_t n = static_cast<std::int64_t>(item) / nbands / ng;
      const std::int64_t i0 = band * band_rows, i1 = std::min(ho, i0 + band_rows);
      float* image = y + n * mb * out_cell;
      const Span& g = rows.group(static_cast<std::size_t>(gi));
      zero_border(image, g.first, g.count, ho, wo, i0, i1);
      const std::int64_t at = ((i0 + 1) * (wo + 2) + 1) * kBlock;
      const OutPlane out{image + at, residual ? residual + n * mb * out_cell + at : nullptr, (wo + 2) * kBlock,
                         out_cell};
      rows.run_plane(src, (n * s.src_blocks * hp + i0 * stage.stride_h) * wp * lanes,
                     stage.stride_h * wp * lanes, i1 - i0, static_cast<std::size_t>(gi), out, kChunk);
    });
    return;
  }
  parallel_for(static_cast<std::size_t>(s.batch * ho), [&](std::size_t item) {
    const std::int64_t i = static_cast<std::int64_t>(item) % ho, n = static_cast<std::int64_t>(item) / ho;
    OutRow out(y + n * mb * out_cell, residual ? residual + n * mb * out_cell : nullptr, mb, ho, wo, i);
    rows.run(src, (n * s.src_blocks * hp + i * stage.stride_h) * wp * lanes, out);
  });
}

void blocked_entry_conv(const float* x, std::int64_t batch, std::int64_t channels, std::int64_t height,
                        std::int64_t width, const BlockedStage& conv, float* y, const GemmIsa& isa,
                        const ParallelFor& parallel_for) {
  const std::int64_t hp = height + 2, wp = width + 2;
  ScratchBuffer local;
  float* xp = thread_scratch(static_cast<std::size_t>(batch * channels * hp * wp), local);
  if (batch * channels > 0)
    parallel_for(static_cast<std::size_t>(batch * channels), [&](std::size_t plane) {
      float* out = xp + static_cast<std::int64_t>(plane) * hp * wp;
      const float* in = x + static_cast<std::int64_t>(plane) * height * width;
      zero(out, wp);
      for (std::int64_t i = 0; i < height; ++i) {
        float* row = out + (i + 1) * wp;
        row[0] = row[width + 1] = 0.0f;
        std::memcpy(row + 1, in + i * width, static_cast<std::size_t>(width) * sizeof(float));
      }
      zero(out + (hp - 1) * wp, wp);
    });
  blocked_address_conv({batch, channels, height, width, 1}, xp, conv, nullptr, y, isa, parallel_for);
}

void blocked_address_conv_pair(const BlockedInput& s, const float* x, const BlockedStage& first,
                               const BlockedStage& second, const float* residual, float* y, const GemmIsa& isa,
                               const ParallelFor& parallel_for, PolyphaseCache* polyphase) {
  const std::int64_t h1 = ceil_div(s.height, first.stride_h), w1 = ceil_div(s.width, first.stride_w);
  const std::int64_t h2 = ceil_div(h1, second.stride_h), w2 = ceil_div(w1, second.stride_w);
  const std::int64_t mb1 = blocks_of(first.out_channels), mb2 = blocks_of(second.out_channels);
  const std::int64_t hp = s.height + 2, wp = s.width + 2, in_cell = hp * wp * kBlock;
  const std::int64_t slot_row = (w1 + 2) * kBlock, slot = mb1 * slot_row, out_cell = (h2 + 2) * (w2 + 2) * kBlock;
  if (s.batch == 0 || mb2 == 0) return;
  if (h2 == 0 || w2 == 0) {
    zero(y, s.batch * mb2 * out_cell);
    return;
  }
  const std::shared_ptr<const PolyphasePlan> plan = polyphase ? polyphase->get(first, second) : nullptr;
  if (plan && plan->fits(s)) {  // the first conv where the second reads it only
    ScratchBuffer local;
    float* phase = thread_scratch(plan->phase_floats(s), local);
    for (std::int64_t n = 0; n < s.batch; ++n)
      plan->run({1, s.src_blocks, s.height, s.width}, x + n * s.src_blocks * in_cell, first, second,
                residual ? residual + n * mb2 * out_cell : nullptr, phase, y + n * mb2 * out_cell, isa, parallel_for);
    return;
  }
  if (whole_first_conv(first, second, w1, w2)) {  // the first conv whole, then the second
    const std::int64_t mid_cell = (h1 + 2) * (w1 + 2) * kBlock;
    ScratchBuffer local;
    float* mid = thread_scratch(static_cast<std::size_t>(mb1 * mid_cell), local);
    for (std::int64_t n = 0; n < s.batch; ++n) {
      blocked_address_conv({1, s.src_blocks, s.height, s.width}, x + n * s.src_blocks * in_cell, first, nullptr, mid,
                           isa, parallel_for);
      blocked_address_conv({1, mb1, h1, w1}, mid, second, residual ? residual + n * mb2 * out_cell : nullptr,
                           y + n * mb2 * out_cell, isa, parallel_for);
    }
    return;
  }
  const bool avx512 = use_avx512(isa);
  const StageRows rows1(first, w1, in_cell, avx512), rows2(second, w2, slot_row, avx512);
  const float* in[3];  // the first conv's row 0 of image 0 reads padded rows 0, 1, 2 of X
  for (int d = 0; d < 3; ++d) in[d] = x + (d * wp + 1) * kBlock;
  const std::vector<const float*> src1 = rows1.reads(in);
  // Rows of the output are claimed `claim` at a time by whichever call of `fn` gets there first.  A call
  // keeps the first conv's last three rows in a ring (slot r % 3 holds row r; a fourth slot stays
  // zero for rows outside the image) and computes each of them once while its claims are
  // contiguous, as they all are on one thread; a claim that does not continue the previous one
  // restarts the ring.  The values do not depend on who computes them.
  const std::int64_t total = s.batch * h2, claim = 8;
  std::atomic<std::int64_t> next{0};
  const std::size_t calls = static_cast<std::size_t>(std::min<std::int64_t>(ceil_div(total, claim), 64));
  parallel_for(calls, [&](std::size_t) {
    float* ring = nullptr;
    // The second conv's reads per phase (i * stride) % 3 of its row i, all three rows inside.
    std::vector<const float*> phase[3];
    std::int64_t image = -1, computed = -1;  // rows 0..computed of the first conv are in the ring
    for (;;) {
      const std::int64_t start = next.fetch_add(claim);
      if (start >= total) break;
      if (!ring) {  // slots 0-2 need zero border cells only (rows are written whole), slot 3 all
        ring = ring_scratch(static_cast<std::size_t>(4 * slot));
        for (std::int64_t b = 0; b < 3 * mb1; ++b) {
          zero(ring + b * slot_row, kBlock);
          zero(ring + (b + 1) * slot_row - kBlock, kBlock);
        }
        zero(ring + 3 * slot, slot);
        for (int p = 0; p < 3; ++p) {
          const float* mid[3];
          for (int d = 0; d < 3; ++d) mid[d] = ring + (p + d + 2) % 3 * slot + kBlock;
          phase[p] = rows2.reads(mid);
        }
      }
      for (std::int64_t item = start; item < std::min(start + claim, total); ++item) {
        const std::int64_t i = item % h2, n = item / h2;
        const std::int64_t lo_row = i * second.stride_h - 1, hi_row = std::min(h1 - 1, i * second.stride_h + 1);
        if (n != image || computed < lo_row - 1 || computed > hi_row) computed = std::max<std::int64_t>(lo_row, 0) - 1;
        image = n;
        for (std::int64_t r = computed + 1; r <= hi_row; ++r)
          rows1.run(src1, (n * s.src_blocks * hp + r * first.stride_h) * wp * kBlock,
                    OutRow(ring + (r % 3) * slot + kBlock, slot_row));
        computed = std::max(computed, hi_row);
        const OutRow out(y + n * mb2 * out_cell, residual ? residual + n * mb2 * out_cell : nullptr, mb2, h2, w2, i);
        if (lo_row >= 0 && lo_row + 2 < h1) {
          rows2.run(phase[(lo_row + 1) % 3], 0, out);
        } else {  // a row at the edge: the rows outside read the zero slot
          const float* mid[3];
          for (int d = 0; d < 3; ++d) {
            const std::int64_t r = lo_row + d;
            mid[d] = ring + (r >= 0 && r < h1 ? r % 3 : 3) * slot + kBlock;
          }
          rows2.run(rows2.reads(mid), 0, out);
        }
      }
    }
  });
}

}  // namespace onnxopt
