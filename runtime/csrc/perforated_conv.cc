#include "perforated_conv.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "perforated_conv_kernels.h"

namespace onnxopt {
namespace {

// Without K-blocking (AVX2, portable): the packed input block of one work item stays within this
// many bytes (half of a 1 MiB L2):
// its panels are re-read once per row block of the weights.  But it holds at least kMinPanels
// panels: each row block of the weights (mr x K, 110 KiB at K = 2304) is streamed from L3 once
// per block, and with one panel per block that stream halves the tile's speed (measured: 118
// vs 244 GFLOP/s at K = 2304, 2 panels; B panels streaming from L3 cost nothing measurable).
constexpr std::int64_t kPackedBudget = 512 * 1024;
constexpr std::int64_t kMinPanels = 4;
// Below this many work items the output channels are split too, so that a second thread has work.
constexpr std::int64_t kMinItems = 2;
constexpr std::int64_t kMinRowsPerSplit = 64;
// Output channels per work item of the fill pass.
constexpr std::int64_t kFillRows = 16;
// Most segments per 16-lane vector for the permute packing (else gathers).
constexpr int kMaxSegments = 4;
// K-blocked GEMM (AVX-512): K blocks of whole channels of at most about this many k (a packed K
// block of one panel, kc x 32 floats, is 288 KiB at kc = 2304: it stays in L2 while all row
// blocks of the weights run over it, their stream prefetched by the tiles), and a work item's
// position block of this many panels.  Was 320 (a 36 KiB block in L1, 8 K blocks at 256
// channels, every tile storing and reloading its partial sums 8 times): 2304 is 1-2% faster at
// 3x3 256->256 56x56 and 7-11% at 3x3 512->512 28x28 (interleaved A/B, 1 thread).
constexpr std::int64_t kKBlock = 2304;
constexpr std::int64_t kBlockPanels = 4;

std::int64_t round_up(std::int64_t a, std::int64_t b) { return (a + b - 1) / b * b; }

// offsets[t * nr + j]: where tap t of kept position pos[j] reads in a channel plane, -1 in the
// padding and for the columns j >= nc that pad the panel.
// inside[t] = 1 where tap t has no -1.  Columns j >= nc repeat column 0's offset so as not to
// spoil that: the panel's padding columns then hold copies of real values instead of zeros,
// which the tiles compute but never store (they store nc columns).
void panel_offsets(const PerforatedConvShape& s, const std::int32_t* pos, int nc, int nr, std::int32_t* offsets,
                   std::uint8_t* inside) {
  const std::int64_t taps = s.kernel_h * s.kernel_w;
  const std::int64_t wo = s.out_width();
  for (std::int64_t j = 0; j < nr; ++j) {
    if (j >= nc) {
      for (std::int64_t t = 0; t < taps; ++t) offsets[t * nr + j] = offsets[t * nr];
      continue;
    }
    const std::int64_t oy = pos[j] / wo, ox = pos[j] - oy * wo;
    const std::int64_t iy0 = oy * s.stride_h - s.pad_top, ix0 = ox * s.stride_w - s.pad_left;
    for (std::int64_t ky = 0; ky < s.kernel_h; ++ky) {
      const std::int64_t iy = iy0 + ky * s.dilation_h;
      for (std::int64_t kx = 0; kx < s.kernel_w; ++kx) {
        const std::int64_t ix = ix0 + kx * s.dilation_w;
        const bool inside = iy >= 0 && iy < s.height && ix >= 0 && ix < s.width;
        offsets[(ky * s.kernel_w + kx) * nr + j] = inside ? static_cast<std::int32_t>(iy * s.width + ix) : -1;
      }
    }
  }
  for (std::int64_t t = 0; t < taps; ++t) {
    inside[t] = 1;
    for (int j = 0; j < nr; ++j) inside[t] &= offsets[t * nr + j] >= 0 ? 1 : 0;
  }
}

void pack_generic(const float* image, const PanelGeometry& g, const std::int32_t* offsets,
                  const std::uint8_t* inside, int nr, float* dst) {
  const std::int64_t taps = g.kernel_h * g.kernel_w;
  for (std::int64_t c = 0; c < g.channels; ++c) {
    const float* src = image + c * g.plane;
    const std::int32_t* off = offsets;
    for (std::int64_t t = 0; t < taps; ++t) {
      if (inside[t]) {
        for (int j = 0; j < nr; ++j) dst[j] = src[off[j]];
        off += nr;
        dst += nr;
        continue;
      }
      for (int j = 0; j < nr; ++j) {
        const std::int32_t o = off[j];
        const float v = src[o < 0 ? 0 : o];
        dst[j] = o < 0 ? 0.0f : v;
      }
      off += nr;
      dst += nr;
    }
  }
}

// o[i] = min(max(o[i], lo), hi); a NaN stays NaN (std::max / std::min return their first argument
// when a comparison is false).
void clamp_row(float* o, std::int64_t count, float lo, float hi) {
  for (std::int64_t i = 0; i < count; ++i) o[i] = std::min(std::max(o[i], lo), hi);
}

void fill_generic(const float* src, const std::int32_t* fill, const FillVector*, std::int64_t count, float* dst) {
  for (std::int64_t q = 0; q < count; ++q) dst[q] = src[fill[q]];
}

// The AVX-512 gathers where the GEMM runs on AVX-512 (so the CPU has it and no lesser ISA was
// forced through ONNXOPT_GEMM_ISA), else portable loops.
PerforatedKernels choose_kernels(const GemmIsa& isa) {
#if defined(ONNXOPT_X86_KERNELS)
  if (std::strcmp(isa.name, "avx512f") == 0 && isa.nr % 16 == 0 && isa.nr <= 64) return perforated_kernels_avx512();
#else
  (void)isa;
#endif
  return {&pack_generic, &fill_generic, nullptr, nullptr, nullptr};
}

// Chosen once, from the first GemmIsa seen (there is one per process, see gemm_isa()).
const PerforatedKernels& kernels_for(const GemmIsa& isa) {
  static const PerforatedKernels kernels = choose_kernels(isa);
  return kernels;
}

// The segments of a panel (see PermSegment), or 0 when some vector would need more than
// `max_per_vector` of them (sparse or scattered positions: gathers are cheaper there).  A lane
// joins a segment of its vector on the same output row whose window still holds all of its
// taps (window index of tap (., 0) below 32 - (kernel_w - 1) * dilation_w).
int panel_segments(const PerforatedConvShape& s, const std::int32_t* pos, int nc, int nr, int max_per_vector,
                   PermSegment* segs) {
  const std::int64_t wo = s.out_width();
  const std::int64_t span = 32 - (s.kernel_w - 1) * s.dilation_w;  // window indices of tap (., 0)
  if (span <= 0) return 0;
  int count = 0;
  for (int v = 0; v * 16 < nr; ++v) {
    const int first = count;
    std::int64_t oys[16], bases[16];
    for (int l = 0; l < 16 && v * 16 + l < nc; ++l) {
      const std::int64_t p = pos[v * 16 + l];
      const std::int64_t oy = p / wo, ox = p - oy * wo;
      int i = first;
      for (; i < count; ++i) {
        const std::int64_t at = (ox - bases[i - first]) * s.stride_w;
        if (oys[i - first] == oy && at >= 0 && at < span) break;
      }
      if (i == count) {
        if (count - first == max_per_vector) return 0;
        oys[i - first] = oy;
        bases[i - first] = ox;
        PermSegment& sg = segs[count++];
        sg.iy = static_cast<std::int32_t>(oy * s.stride_h - s.pad_top);
        sg.ix = static_cast<std::int32_t>(ox * s.stride_w - s.pad_left);
        sg.lanes = 0;
        sg.vector = static_cast<std::uint16_t>(v);
        std::fill(sg.index, sg.index + 16, 0);
      }
      PermSegment& sg = segs[i];
      const std::int64_t at = (ox - bases[i - first]) * s.stride_w;
      sg.lanes = static_cast<std::uint16_t>(sg.lanes | (1u << l));
      sg.index[l] = static_cast<std::int32_t>(at);
    }
  }
  return count;
}

std::uint16_t bits(std::int64_t from, std::int64_t to) {  // lanes [from, to) of 16, clamped
  from = from < 0 ? 0 : from > 16 ? 16 : from;
  to = to < from ? from : to > 16 ? 16 : to;
  return static_cast<std::uint16_t>(((1u << to) - 1u) & ~((1u << from) - 1u));
}

}  // namespace

struct PerforatedPlan {
  // What the plan was made for (the shape's spatial geometry: batch and channels are zero).
  PerforatedConvShape geometry;
  int nr = 0;
  std::vector<std::int32_t> positions, fill;
  bool identity = false;
  struct Panel {
    std::int64_t first_op = 0, first_line = 0, first_segment = 0;
    int ops = 0, lines = 0;
    std::int64_t gather = -1;  // -1: packed by permutes, else its offsets start at offsets[gather * taps * nr]
  };
  std::vector<Panel> panels;  // one per nr kept positions
  std::int64_t stride = 0;    // packed floats per channel (taps x nr)
  std::vector<PermOp> ops;
  std::vector<std::int64_t> lines;
  std::vector<PermSegment> segments;
  std::vector<std::int32_t> offsets;  // gather panels: [taps][nr] each
  std::vector<std::uint8_t> inside;   // gather panels: [taps] each
  std::vector<FillVector> fill_vectors;  // one per full 16 outputs of a row

  PermPlan perm(std::int64_t q) const {
    const Panel& p = panels[static_cast<std::size_t>(q)];
    PermPlan view;
    view.op = ops.data() + p.first_op;
    view.ops = p.ops;
    view.line = lines.data() + p.first_line;
    view.lines = p.lines;
    view.segment = segments.data() + p.first_segment;
    view.stride = stride;
    return view;
  }
};

namespace {

PerforatedConvShape spatial(const PerforatedConvShape& s) {
  PerforatedConvShape g = s;
  g.batch = g.in_channels = g.out_channels = 0;
  g.group = 1;
  return g;
}

bool same_geometry(const PerforatedConvShape& a, const PerforatedConvShape& b) {
  return a.height == b.height && a.width == b.width && a.kernel_h == b.kernel_h && a.kernel_w == b.kernel_w &&
         a.stride_h == b.stride_h && a.stride_w == b.stride_w && a.dilation_h == b.dilation_h &&
         a.dilation_w == b.dilation_w && a.pad_top == b.pad_top && a.pad_left == b.pad_left &&
         a.pad_bottom == b.pad_bottom && a.pad_right == b.pad_right;
}

bool plan_matches(const PerforatedPlan& plan, const PerforatedConvShape& s, const std::int32_t* positions,
                  std::int64_t count, const std::int32_t* fill, const GemmIsa& isa) {
  const std::int64_t plane = s.out_height() * s.out_width();
  return plan.nr == isa.nr && same_geometry(plan.geometry, s) &&
         static_cast<std::int64_t>(plan.positions.size()) == count &&
         static_cast<std::int64_t>(plan.fill.size()) == plane &&
         std::memcmp(plan.positions.data(), positions, static_cast<std::size_t>(count) * sizeof(std::int32_t)) == 0 &&
         std::memcmp(plan.fill.data(), fill, static_cast<std::size_t>(plane) * sizeof(std::int32_t)) == 0;
}

// Per full 16 outputs of a row: the lanes grouped greedily into windows of 32 consecutive
// sources (from the smallest source not yet covered), windows = 0 past kMaxFillWindows.
std::vector<FillVector> fill_vectors(const std::int32_t* fill, std::int64_t plane) {
  std::vector<FillVector> vectors(static_cast<std::size_t>(plane / 16));
  for (std::size_t v = 0; v < vectors.size(); ++v) {
    FillVector& f = vectors[v];
    f = FillVector{};
    const std::int32_t* src = fill + 16 * v;
    unsigned left = 0xFFFFu;
    int windows = 0;
    while (left && windows < kMaxFillWindows) {
      std::int32_t lo = 0;
      bool first = true;
      for (int l = 0; l < 16; ++l)
        if ((left >> l & 1u) && (first || src[l] < lo)) {
          lo = src[l];
          first = false;
        }
      unsigned mask = 0;
      for (int l = 0; l < 16; ++l)
        if ((left >> l & 1u) && src[l] - lo < 32) {
          mask |= 1u << l;
          f.offset[l] = src[l] - lo;
        }
      f.start[windows] = lo;
      f.mask[windows] = static_cast<std::uint16_t>(mask);
      left &= ~mask;
      ++windows;
    }
    f.windows = left ? 0 : windows;
  }
  return vectors;
}

// Appends the permute plan of one panel's segments (per kernel row and segment: the window's
// offset and load masks, rows outside the image loading nothing) and the input lines they read.
void append_perm_plan(const PanelGeometry& g, const PermSegment* segs, int count, int nr, PerforatedPlan& plan,
                      PerforatedPlan::Panel& panel) {
  panel.first_segment = static_cast<std::int64_t>(plan.segments.size());
  plan.segments.insert(plan.segments.end(), segs, segs + count);
  panel.first_op = static_cast<std::int64_t>(plan.ops.size());
  // Per vector, the narrow segments (all taps within the window's first 16 floats) first.
  const std::int64_t reach = (g.kernel_w - 1) * g.dilation_w;
  std::vector<int> order;
  std::vector<std::uint16_t> narrow(static_cast<std::size_t>(count));
  for (int i = 0; i < count; ++i) {
    std::int32_t top = 0;
    for (int l = 0; l < 16; ++l)
      if (segs[i].lanes >> l & 1u) top = std::max(top, segs[i].index[l]);
    narrow[static_cast<std::size_t>(i)] = top + reach < 16 ? 1 : 0;
  }
  for (int i = 0; i < count;) {
    int j = i;
    while (j < count && segs[j].vector == segs[i].vector) ++j;
    for (int pass = 1; pass >= 0; --pass)
      for (int k = i; k < j; ++k)
        if (narrow[static_cast<std::size_t>(k)] == pass) order.push_back(k);
    i = j;
  }
  for (std::int64_t ky = 0; ky < g.kernel_h; ++ky) {
    for (const int i : order) {
      const PermSegment& sg = segs[i];
      const bool thin = narrow[static_cast<std::size_t>(i)] != 0;
      const std::int64_t y = sg.iy + ky * g.dilation_h;
      const std::int64_t x = sg.ix;
      const bool row = y >= 0 && y < g.height;
      const std::uint16_t lo = row ? bits(-x, g.width - x) : static_cast<std::uint16_t>(0);
      const std::uint16_t hi = row && !thin ? bits(-x - 16, g.width - x - 16) : static_cast<std::uint16_t>(0);
      // A window outside the image loads nothing and stores the zero padding.
      plan.ops.push_back(PermOp{static_cast<std::int32_t>(lo || hi ? y * g.width + x : 0),
                                static_cast<std::int32_t>(ky * g.kernel_w * nr + 16 * sg.vector), sg.lanes, lo, hi,
                                static_cast<std::uint16_t>(i), static_cast<std::uint16_t>(thin ? 1 : 0)});
    }
  }
  panel.ops = static_cast<int>(static_cast<std::int64_t>(plan.ops.size()) - panel.first_op);
  // The input lines (16-float units of the channel plane) the windows cover.
  panel.first_line = static_cast<std::int64_t>(plan.lines.size());
  int nlines = 0;
  for (std::int64_t i = panel.first_op; i < static_cast<std::int64_t>(plan.ops.size()); ++i) {
    const PermOp op = plan.ops[static_cast<std::size_t>(i)];
    if (!op.lo && !op.hi) continue;
    const std::int64_t first = op.offset >> 4;
    const std::int64_t last = (op.offset + (op.narrow ? 15 : 31)) >> 4;
    for (std::int64_t line = first; line <= last && nlines < kMaxPermLines; ++line) {
      bool seen = false;
      for (int j = 0; j < nlines && !seen; ++j) seen = plan.lines[static_cast<std::size_t>(panel.first_line + j)] == line * 16;
      if (!seen) {
        plan.lines.push_back(line * 16);
        ++nlines;
      }
    }
  }
  panel.lines = nlines;
}

bool is_identity(const std::int32_t* positions, std::int64_t count, const std::int32_t* fill,
                 std::int64_t plane) {
  if (count != plane) return false;
  for (std::int64_t q = 0; q < plane; ++q)
    if (positions[q] != q || fill[q] != q) return false;
  return true;
}

}  // namespace

std::string validate_mask(const std::int32_t* positions, std::int64_t count, const std::int32_t* fill,
                          std::int64_t plane) {
  if (count < 1) return "positions is empty: at least one output position must be computed";
  if (count > plane)
    return "positions has " + std::to_string(count) + " entries, more than the " + std::to_string(plane) +
           " output positions";
  for (std::int64_t i = 0; i < count; ++i) {
    if (positions[i] < 0 || positions[i] >= plane)
      return "positions[" + std::to_string(i) + "] = " + std::to_string(positions[i]) +
             " is outside the output plane [0, " + std::to_string(plane) + ")";
  }
  for (std::int64_t q = 0; q < plane; ++q) {
    if (fill[q] < 0 || fill[q] >= count)
      return "fill[" + std::to_string(q) + "] = " + std::to_string(fill[q]) + " is not an index into positions [0, " +
             std::to_string(count) + ")";
  }
  return {};
}

std::shared_ptr<const PerforatedPlan> make_perforated_plan(const PerforatedConvShape& s,
                                                           const std::int32_t* positions, std::int64_t count,
                                                           const std::int32_t* fill, const GemmIsa& isa) {
  auto plan = std::make_shared<PerforatedPlan>();
  const std::int64_t plane_out = s.out_height() * s.out_width();
  const PerforatedKernels& kernels = kernels_for(isa);
  plan->geometry = spatial(s);
  plan->nr = isa.nr;
  plan->positions.assign(positions, positions + count);
  plan->fill.assign(fill, fill + plane_out);
  plan->identity = is_identity(positions, count, fill, plane_out);
  plan->fill_vectors = fill_vectors(fill, plane_out);
  const std::int64_t taps = s.kernel_h * s.kernel_w;
  const std::int64_t nr = isa.nr;
  plan->stride = taps * nr;
  const PanelGeometry geometry{s.height * s.width, 0, s.height, s.width, s.kernel_h, s.kernel_w,
                               s.dilation_h, s.dilation_w};
  const bool use_perm = kernels.perm_pack && nr % 16 == 0;
  const std::int64_t panels = ceil_div(count, nr);
  plan->panels.resize(static_cast<std::size_t>(panels));
  std::vector<PermSegment> segments(static_cast<std::size_t>(kMaxSegments * nr / 16));
  std::int64_t gathers = 0;
  for (std::int64_t q = 0; q < panels; ++q) {
    PerforatedPlan::Panel& panel = plan->panels[static_cast<std::size_t>(q)];
    const int cols_here = static_cast<int>(std::min<std::int64_t>(nr, count - q * nr));
    const std::int32_t* pos = positions + q * nr;
    const int nseg = use_perm ? panel_segments(s, pos, cols_here, static_cast<int>(nr), kMaxSegments,
                                               segments.data())
                              : 0;
    if (nseg > 0) {
      append_perm_plan(geometry, segments.data(), nseg, static_cast<int>(nr), *plan, panel);
      continue;
    }
    panel.gather = gathers++;
    plan->offsets.resize(static_cast<std::size_t>(gathers * taps * nr));
    plan->inside.resize(static_cast<std::size_t>(gathers * taps));
    panel_offsets(s, pos, cols_here, static_cast<int>(nr), plan->offsets.data() + panel.gather * taps * nr,
                  plan->inside.data() + panel.gather * taps);
  }
  return plan;
}

std::shared_ptr<const PerforatedPlan> PerforatedPlanCache::get(const PerforatedConvShape& s,
                                                               const std::int32_t* positions, std::int64_t count,
                                                               const std::int32_t* fill, const GemmIsa& isa,
                                                               std::string* error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (last_ && plan_matches(*last_, s, positions, count, fill, isa)) return last_;
  }
  *error = validate_mask(positions, count, fill, s.out_height() * s.out_width());
  if (!error->empty()) return nullptr;
  std::shared_ptr<const PerforatedPlan> plan = make_perforated_plan(s, positions, count, fill, isa);
  std::lock_guard<std::mutex> lock(mutex_);
  last_ = plan;
  return plan;
}

void perforated_conv(const PerforatedConvShape& s, const float* x, const PackedWeights& weights,
                     const float* bias, const std::int32_t* positions, std::int64_t count,
                     const std::int32_t* fill, float* y, const GemmIsa& isa, const ParallelFor& parallel_for) {
  if (s.batch == 0 || s.out_height() * s.out_width() == 0 || s.out_channels == 0) return;
  perforated_conv(s, x, weights, bias, *make_perforated_plan(s, positions, count, fill, isa), y, isa, parallel_for);
}

void perforated_conv(const PerforatedConvShape& s, const float* x, const PackedWeights& weights,
                     const float* bias, const PerforatedPlan& plan, float* y, const GemmIsa& isa,
                     const ParallelFor& parallel_for, float clip_min, float clip_max) {
  const std::int64_t count = static_cast<std::int64_t>(plan.positions.size());
  const std::int32_t* fill = plan.fill.data();
  const std::int64_t plane_out = s.out_height() * s.out_width();
  const std::int64_t k = s.k_per_group();
  const std::int64_t m_per_group = s.out_channels / s.group;
  if (s.batch == 0 || plane_out == 0 || s.out_channels == 0) return;

  // Everything kept in order: compute straight into y, no fill pass.
  const bool identity = plan.identity;
  // The compact [N, Cout, P] result lives in a per-thread buffer that persists between runs (a
  // fresh allocation of this size is an mmap and page faults on every run).
  thread_local AlignedVector<float> compact;
  float* dst = y;
  if (!identity) {
    compact.resize(static_cast<std::size_t>(s.batch * s.out_channels * count + 32));  // + the fill's read slack
    dst = compact.data();
  }

  const PerforatedKernels& kernels = kernels_for(isa);
  const std::int64_t plane_in = s.height * s.width;
  const std::int64_t cin_per_group = s.in_channels / s.group;
  const std::int64_t taps = s.kernel_h * s.kernel_w;
  const PanelGeometry geometry{plane_in, cin_per_group, s.height, s.width,
                               s.kernel_h, s.kernel_w, s.dilation_h, s.dilation_w};
  const bool kblocked = kernels.acc_rows && isa.mr == 12 && isa.nr == 32;

  // K blocks (whole channels) and position blocks.  Without K-blocking, a work item packs all
  // of K for its panels first (within kPackedBudget, at least kMinPanels panels).
  std::int64_t kb_channels = cin_per_group;
  std::int64_t max_cols = kBlockPanels * isa.nr;
  if (kblocked) {
    kb_channels = ceil_div(cin_per_group, std::max<std::int64_t>(1, ceil_div(k, kKBlock)));
  } else {
    max_cols = std::max<std::int64_t>(
        kMinPanels * isa.nr,
        kPackedBudget / (static_cast<std::int64_t>(sizeof(float)) * std::max<std::int64_t>(k, 1)) / isa.nr * isa.nr);
  }
  const std::int64_t kblocks = ceil_div(cin_per_group, kb_channels);
  std::int64_t blocks = ceil_div(count, max_cols);
  const std::int64_t cols = round_up(ceil_div(count, blocks), isa.nr);
  blocks = ceil_div(count, cols);
  std::int64_t splits = 1;
  const std::int64_t base_items = s.batch * s.group * blocks;
  while (base_items * splits < kMinItems && m_per_group / (splits * 2) >= kMinRowsPerSplit) splits *= 2;
  const std::int64_t split_rows = round_up(ceil_div(m_per_group, splits), isa.mr);
  splits = ceil_div(m_per_group, split_rows);

  parallel_for(static_cast<std::size_t>(base_items * splits), [&](std::size_t item) {
    std::int64_t rest = static_cast<std::int64_t>(item);
    const std::int64_t split = rest % splits;
    rest /= splits;
    const std::int64_t b = rest % blocks;
    rest /= blocks;
    const std::int64_t g = rest % s.group;
    const std::int64_t n = rest / s.group;
    const std::int64_t p0 = b * cols;
    const std::int64_t nc = std::min(cols, count - p0);
    const std::int64_t panels = ceil_div(nc, isa.nr);
    const std::int64_t nr = isa.nr;

    const float* image = x + (n * s.in_channels + g * cin_per_group) * plane_in;
    // Packs channels [c0, c0 + channels) of panel q into dst ([channels * taps][nr]).
    auto pack_panel = [&](std::int64_t q, std::int64_t c0, std::int64_t channels, float* dst_panel) {
      PanelGeometry gk = geometry;
      gk.channels = channels;
      const float* from = image + c0 * plane_in;
      const std::int64_t panel = p0 / nr + q;
      const std::int64_t gather = plan.panels[static_cast<std::size_t>(panel)].gather;
      if (gather < 0)
        kernels.perm_pack(from, gk, plan.perm(panel), dst_panel);
      else
        kernels.pack(from, gk, plan.offsets.data() + gather * taps * nr, plan.inside.data() + gather * taps,
                     static_cast<int>(nr), dst_panel);
    };

    float* out = dst + n * s.out_channels * count + p0;
    // Rows go by the packed weights' row blocks (not all isa.mr high, see PackedWeights); a split
    // starts and ends on a block start.
    const std::int64_t m_begin = weights.snap(std::min(m_per_group, split * split_rows));
    const std::int64_t m_end = weights.snap(std::min(m_per_group, (split + 1) * split_rows));
    thread_local AlignedVector<float> packed;
    if (kblocked) {
      // Per K block and panel: pack (into L2), then every row block of the weights over it.
      packed.resize(static_cast<std::size_t>(kb_channels * taps * nr));
      thread_local std::vector<TileRow> rows;
      rows.clear();
      for (std::int64_t m = m_begin; m < m_end; m += weights.block_rows(m)) {
        const std::int64_t row = g * m_per_group + m;
        rows.push_back(TileRow{weights.block(row), bias ? bias + row : nullptr, static_cast<std::ptrdiff_t>(row * count),
                               static_cast<int>(weights.block_rows(m))});
      }
      for (std::int64_t kb = 0; kb < kblocks; ++kb) {
        const std::int64_t c0 = kb * kb_channels;
        const std::int64_t channels = std::min(kb_channels, cin_per_group - c0);
        const std::int64_t k0 = c0 * taps;
        const int kc = static_cast<int>(channels * taps);
        for (std::int64_t q = 0; q < panels; ++q) {
          const int cols_here = static_cast<int>(std::min<std::int64_t>(nr, nc - q * nr));
          pack_panel(q, c0, channels, packed.data());
          const std::ptrdiff_t next_k0 = q + 1 < panels ? k0 : kb + 1 < kblocks ? k0 + kc : -1;
          kernels.acc_rows(kc, static_cast<std::ptrdiff_t>(k0), rows.data(), static_cast<int>(rows.size()),
                           packed.data(), cols_here, kb > 0, out + q * nr, count, next_k0);
        }
      }
      return;
    }
    // One K block: pack the item's panels, then each row block of the weights over them.
    packed.resize(static_cast<std::size_t>(panels * k * nr));
    for (std::int64_t q = 0; q < panels; ++q) pack_panel(q, 0, cin_per_group, packed.data() + q * k * nr);
    for (std::int64_t m = m_begin; m < m_end; m += weights.block_rows(m)) {
      const std::int64_t row = g * m_per_group + m;
      const int mr = static_cast<int>(weights.block_rows(m));
      const float* a = weights.block(row);
      for (std::int64_t q = 0; q < panels; ++q) {
        const int cols_here = static_cast<int>(std::min<std::int64_t>(nr, nc - q * nr));
        isa.tile(static_cast<int>(k), a, mr, packed.data() + q * k * nr, cols_here,
                 bias ? bias + row : nullptr, out + row * count + q * nr, count);
      }
    }
  });
  // Fill: every output position takes its kept neighbour's value; then the clamp, if any, over the
  // row just written (with no fill, over y's rows as the tiles left them).
  const bool clamped = clamps(clip_min, clip_max);
  if (identity && !clamped) return;
  const std::int64_t rows = s.batch * s.out_channels;
  const float* src_all = dst;
  parallel_for(static_cast<std::size_t>(ceil_div(rows, kFillRows)), [&](std::size_t item) {
    const std::int64_t r0 = static_cast<std::int64_t>(item) * kFillRows;
    const std::int64_t r1 = std::min(rows, r0 + kFillRows);
    for (std::int64_t r = r0; r < r1; ++r) {
      float* o = y + r * plane_out;
      if (!identity) kernels.fill(src_all + r * count, fill, plan.fill_vectors.data(), plane_out, o);
      if (clamped) clamp_row(o, plane_out, clip_min, clip_max);
    }
  });
}

}  // namespace onnxopt
