#include "address_conv.h"

#include <algorithm>

namespace onnxopt {
namespace {

// The packed input block of one work item stays within this many bytes (half of a 1 MiB L2):
// its panels are re-read once per row block of the weights.
constexpr std::int64_t kPackedBudget = 512 * 1024;
// When there is a single block (one image, one group, one block of positions) its output
// channels are split too, so that a second thread has work; the block is packed once, before
// the splits run (a split keeps >= 64 rows).
constexpr std::int64_t kSplits = 2;
constexpr std::int64_t kMinRowsPerSplit = 64;
// Maps with fewer output positions than this (and not a whole number of panels) use the
// channel-vectorised tiles where the ISA has them.
constexpr std::int64_t kChannelTilesBelow = 64;

std::int64_t round_up(std::int64_t a, std::int64_t b) { return (a + b - 1) / b * b; }
std::int64_t div_up(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

}  // namespace

PackedWeights::PackedWeights(const float* w, std::int64_t out_channels, std::int64_t k_per_group,
                             std::int64_t group, const GemmIsa& isa)
    : data_(static_cast<std::size_t>(out_channels * k_per_group)), k_(k_per_group), out_channels_(out_channels),
      group_(group), channels_(std::make_shared<Channels>()) {
  const std::int64_t per_group = out_channels / group;
  start_.resize(static_cast<std::size_t>(per_group));
  rows_.resize(static_cast<std::size_t>(per_group));
  const std::int64_t blocks = div_up(per_group, isa.mr);
  for (std::int64_t b = 0, m = 0; b < blocks; ++b) {
    const std::int64_t rows = per_group / blocks + (b < per_group % blocks ? 1 : 0);
    for (std::int64_t r = 0; r < rows; ++r) {
      start_[static_cast<std::size_t>(m + r)] = m;
      rows_[static_cast<std::size_t>(m + r)] = rows;
    }
    m += rows;
  }
  for (std::int64_t g = 0; g < group; ++g) {
    for (std::int64_t m = 0; m < per_group; m += block_rows(m)) {
      const std::int64_t row = g * per_group + m;
      const std::int64_t mr = block_rows(m);
      float* dst = data_.data() + row * k_;
      for (std::int64_t k = 0; k < k_; ++k)
        for (std::int64_t r = 0; r < mr; ++r) dst[k * mr + r] = w[(row + r) * k_ + k];
    }
  }
}

void PackedWeights::ensure_channel_panels(const ChannelGemm& ch) const {
  Channels& c = *channels_;
  std::call_once(c.once, [&] {
    const std::int64_t per_group = out_channels_ / group_;
    const std::int64_t panels = div_up(per_group, ch.nw);
    c.nw = ch.nw;
    c.per_group = panels;
    // + nw: a tile for channels [m, m + n) of a panel reads nw weights from m on
    c.data.assign(static_cast<std::size_t>(group_ * panels * k_ * ch.nw + ch.nw), 0.0f);
    for (std::int64_t g = 0; g < group_; ++g) {
      for (std::int64_t m = 0; m < per_group; ++m) {
        const std::int64_t m0 = block_start(m), r = m - m0;
        const std::int64_t mr = block_rows(m);
        const float* src = data_.data() + (g * per_group + m0) * k_ + r;
        float* dst = c.data.data() + ((g * panels + m / ch.nw) * k_) * ch.nw + m % ch.nw;
        for (std::int64_t kk = 0; kk < k_; ++kk) dst[kk * ch.nw] = src[kk * mr];
      }
    }
  });
}

const float* PackedWeights::channel_panel(std::int64_t g, std::int64_t m) const {
  const Channels& c = *channels_;
  return c.data.data() + ((g * c.per_group + m / c.nw) * k_) * c.nw;
}

bool identity_table(const std::int32_t* address, std::int64_t rows) {
  for (std::int64_t r = 0; r < rows; ++r)
    if (address[3 * r] != r || address[3 * r + 1] != 0 || address[3 * r + 2] != 0) return false;
  return true;
}

std::string validate_addresses(const std::int32_t* address, std::int64_t rows, std::int64_t src_channels) {
  for (std::int64_t k = 0; k < rows; ++k) {
    const std::int64_t src = address[3 * k];
    if (src < 0 || src >= src_channels) {
      return "address[" + std::to_string(k) + ", 0] = " + std::to_string(src) +
             " is not a channel of X (X has " + std::to_string(src_channels) + " channels)";
    }
  }
  return {};
}

void address_conv(const AddressConvShape& s, const float* x, const PackedWeights& weights,
                  const float* bias, const std::int32_t* address, float* y,
                  const GemmIsa& isa, const ParallelFor& parallel_for, const ChannelGemm* channel,
                  const AddressConvEpilogue& epilogue) {
  const std::int64_t positions = s.out_height() * s.out_width();
  const std::int64_t k = s.in_channels / s.group;
  const std::int64_t m_per_group = s.out_channels / s.group;
  if (s.batch == 0 || positions == 0 || m_per_group == 0) return;

  // Few positions that are not whole panels (7x7 = 49 = 32 + 17): channel-vectorised tiles
  // over all positions of one image at once (one panel of round_up(positions, 16) columns).
  const bool by_channels = channel && positions < kChannelTilesBelow && positions % isa.nr != 0 &&
                           m_per_group >= channel->nw / 2;
  // Otherwise a short column rest (196 = 6 * 32 + 4) uses them for its few columns.
  const bool channel_tail = channel && !by_channels && positions % isa.nr != 0 && positions % isa.nr <= 8 &&
                            channel->rows >= 8;
  if (by_channels || channel_tail) weights.ensure_channel_panels(*channel);
  // An identity table with stride 1: the GEMM reads X's planes as they are, nothing is packed.
  const bool direct =
      isa.direct_b && s.stride_h == 1 && s.stride_w == 1 && identity_table(address, s.in_channels);
  const std::int64_t nr = by_channels ? round_up(positions, 16) : isa.nr;
  const std::int64_t mstep = by_channels ? channel->nw : isa.mr;

  // Output positions per block: as many as the packed budget allows, blocks of equal size.
  const std::int64_t max_cols =
      by_channels ? nr
                  : std::max<std::int64_t>(nr, kPackedBudget / (static_cast<std::int64_t>(sizeof(float)) *
                                                               std::max<std::int64_t>(k, 1)) / nr * nr);
  std::int64_t blocks = div_up(positions, max_cols);
  const std::int64_t cols = round_up(div_up(positions, blocks), nr);
  blocks = div_up(positions, cols);
  // Output-channel splits when there are too few blocks to keep the threads busy.
  std::int64_t splits = 1;
  const std::int64_t base_items = s.batch * s.group * blocks;
  while (base_items == 1 && splits < kSplits && m_per_group / (splits * 2) >= kMinRowsPerSplit) splits *= 2;
  const std::int64_t split_rows = round_up(div_up(m_per_group, splits), mstep);
  splits = div_up(m_per_group, split_rows);
  // First row of a split: a channel panel start (channel tiles) or a row block start.
  auto split_begin = [&](std::int64_t split) {
    const std::int64_t m = std::min(m_per_group, split * split_rows);
    return by_channels ? m : weights.snap(m);
  };

  const std::int64_t plane = s.height * s.width;
  // Stride 1 and whole 16-position vectors: each panel of B is gathered (GatherPackFn) from the
  // displaced planes of X, with a bitmap per distinct displacement of the positions whose read lies
  // inside the image (ShiftNet: 9 bitmaps of H*W bits), just before the row blocks run over it.
  const bool gathered = !direct && isa.gather_pack && !by_channels && !channel_tail && s.stride_h == 1 &&
                        s.stride_w == 1 && positions % 16 == 0;
  const std::int64_t words = positions / 16;
  std::vector<std::uint16_t> bitmaps;
  std::vector<std::int64_t> bitmap_of;  // per address row
  if (gathered) {
    std::vector<std::int64_t> seen;  // (dy, dx) pairs, flattened
    bitmap_of.resize(static_cast<std::size_t>(s.in_channels));
    for (std::int64_t r = 0; r < s.in_channels; ++r) {
      const std::int64_t dy = address[3 * r + 1], dx = address[3 * r + 2];
      std::int64_t u = 0;
      const std::int64_t count = static_cast<std::int64_t>(seen.size()) / 2;
      // a linear search over the first 64 displacements (few distinct ones in practice)
      while (u < count && u < 64 && (seen[2 * u] != dy || seen[2 * u + 1] != dx)) ++u;
      if (u == count || u == 64) {
        u = count;
        seen.push_back(dy);
        seen.push_back(dx);
      }
      bitmap_of[r] = u;
    }
    const std::int64_t count = static_cast<std::int64_t>(seen.size()) / 2;
    bitmaps.assign(static_cast<std::size_t>(count * words), 0);
    for (std::int64_t u = 0; u < count; ++u) {
      const std::int64_t dy = seen[2 * u], dx = seen[2 * u + 1];
      std::uint16_t* bm = bitmaps.data() + u * words;
      const std::int64_t j0 = std::max<std::int64_t>(0, -dx), j1 = std::min(s.width, s.width - dx);
      for (std::int64_t i = std::max<std::int64_t>(0, -dy); i < std::min(s.height, s.height - dy); ++i) {
        for (std::int64_t a = i * s.width + j0, b = i * s.width + j1; a < b;) {
          const std::int64_t off = a % 16, n = std::min(16 - off, b - a);
          bm[a / 16] = static_cast<std::uint16_t>(bm[a / 16] | (((1u << n) - 1u) << off));
          a += n;
        }
      }
    }
  }
  // The gathering tiles' tables for image n, group g: each B row's displaced plane and bitmap.
  struct Gather {
    std::vector<const float*> rows;
    std::vector<const std::uint16_t*> masks;
  };
  auto gather_tables = [&](std::int64_t n, std::int64_t g, Gather& t) {
    t.rows.resize(static_cast<std::size_t>(k));
    t.masks.resize(static_cast<std::size_t>(k));
    for (std::int64_t kk = 0; kk < k; ++kk) {
      const std::int32_t* a = address + 3 * (g * k + kk);
      // may point outside X: only lanes inside the image (bit set) are read
      t.rows[kk] = x + (n * s.src_channels + a[0]) * plane + static_cast<std::int64_t>(a[1]) * s.width + a[2];
      t.masks[kk] = bitmaps.data() + bitmap_of[g * k + kk] * words;
    }
  };
  // B of image n, group g, positions from p0 when direct, and its row stride
  auto direct_b = [&](std::int64_t n, std::int64_t g, std::int64_t p0) {
    return x + (n * s.src_channels + g * k) * plane + p0;
  };
  // Packs output positions [p0, p0 + nc) of image n, group g into `dst` (panels of [k][nr]).
  auto pack = [&](std::int64_t n, std::int64_t g, std::int64_t p0, std::int64_t nc, float* dst) {
    thread_local std::vector<PackRun> runs;
    runs.resize(static_cast<std::size_t>(pack_runs_capacity(nc, static_cast<int>(nr))));
    PackJob job{x + n * s.src_channels * plane, address + 3 * g * k, k, s.height, s.width, s.out_width(),
                s.stride_h, s.stride_w, p0, nc, static_cast<int>(nr), dst, runs.data()};
    isa.pack(job);
  };
  // The epilogue of the tile whose first output is y + offset (null: none).
  const bool fused = !epilogue.empty();
  auto tile_epilogue = [&](std::int64_t offset) {
    return Epilogue{epilogue.residual ? epilogue.residual + offset : nullptr, positions, epilogue.clip_min,
                    epilogue.clip_max};
  };
  // Output rows [m_begin, m_end) of group g times the packed positions [p0, p0 + nc).
  auto multiply = [&](std::int64_t n, std::int64_t g, std::int64_t p0, std::int64_t nc, const float* packed,
                      std::int64_t m_begin, std::int64_t m_end, const Gather* gather) {
    const std::int64_t base = (n * s.out_channels) * positions + p0;
    float* out = y + base;
    if (gather) {
      // Panel-outer: a panel is gathered once, into a per-thread buffer that stays in L1 while
      // every row block runs over it.  (Tiles that gathered B themselves, a masked load per k in
      // every row block, ran 1.05-1.12x onnxruntime's 1x1 conv at 128-256 channels @28, this
      // 0.92-0.98x; one thread, bench_address_conv shapes.)
      thread_local AlignedVector<float> panel;
      panel.resize(static_cast<std::size_t>(k * nr));
      for (std::int64_t q = 0; q * nr < nc; ++q) {
        const int cols_here = static_cast<int>(std::min<std::int64_t>(nr, nc - q * nr));
        isa.gather_pack(static_cast<int>(k), gather->rows.data(), gather->masks.data(), p0 + q * nr, cols_here,
                        static_cast<int>(nr), panel.data());
        for (std::int64_t m = m_begin; m < m_end; m += weights.block_rows(m)) {
          const std::int64_t row = g * m_per_group + m;
          const Epilogue ep = tile_epilogue(base + row * positions + q * nr);
          isa.tile_ep(static_cast<int>(k), weights.block(row), static_cast<int>(weights.block_rows(m)), panel.data(),
                      nr, cols_here, bias ? bias + row : nullptr, out + row * positions + q * nr, positions,
                      fused ? &ep : nullptr);
        }
      }
      return;
    }
    if (by_channels) {  // p0 == 0, nc == positions: rows of positions, balanced
      const std::int64_t row_blocks = div_up(nc, channel->rows);
      for (std::int64_t m = m_begin; m < m_end; m += mstep) {
        const std::int64_t row = g * m_per_group + m;
        const int nch = static_cast<int>(std::min<std::int64_t>(mstep, m_end - m));
        const float* w = weights.channel_panel(g, m);
        for (std::int64_t rb = 0, r0 = 0; rb < row_blocks; ++rb) {
          const std::int64_t rows = nc / row_blocks + (rb < nc % row_blocks ? 1 : 0);
          const Epilogue ep = tile_epilogue(base + row * positions + r0);
          channel->tile_ep(static_cast<int>(k), w, nch, direct ? direct_b(n, g, r0) : packed + r0,
                           direct ? plane : nr, static_cast<int>(rows),
                           bias ? bias + row : nullptr, out + row * positions + r0, positions, fused ? &ep : nullptr);
          r0 += rows;
        }
      }
      return;
    }
    // A rest of <= 8 columns in the last panel goes through channel tiles (all lanes used, and
    // one B row read per 32 output channels instead of per 12); same sums, same order.
    const std::int64_t rest = channel_tail ? nc % nr : 0;
    const std::int64_t panels = div_up(nc - rest, nr);
    if (rest > 0) {
      const float* tail = direct ? direct_b(n, g, p0 + panels * nr) : packed + panels * k * nr;
      for (std::int64_t m = m_begin; m < m_end;) {
        const std::int64_t nch = std::min(m_end - m, channel->nw - m % channel->nw);
        const std::int64_t row = g * m_per_group + m;
        const Epilogue ep = tile_epilogue(base + row * positions + panels * nr);
        channel->tile_ep(static_cast<int>(k), weights.channel_panel(g, m - m % channel->nw) + m % channel->nw,
                         static_cast<int>(nch), tail, direct ? plane : nr, static_cast<int>(rest),
                         bias ? bias + row : nullptr,
                         out + row * positions + panels * nr, positions, fused ? &ep : nullptr);
        m += nch;
      }
    }
    for (std::int64_t m = m_begin; m < m_end; m += weights.block_rows(m)) {
      const std::int64_t row = g * m_per_group + m;
      const int mr = static_cast<int>(weights.block_rows(m));
      const float* a = weights.block(row);
      for (std::int64_t q = 0; q < panels; ++q) {
        const int cols_here = static_cast<int>(std::min<std::int64_t>(nr, nc - q * nr));
        const Epilogue ep = tile_epilogue(base + row * positions + q * nr);
        const float* b = direct ? direct_b(n, g, p0 + q * nr) : packed + q * k * nr;
        isa.tile_ep(static_cast<int>(k), a, mr, b, direct ? plane : nr, cols_here, bias ? bias + row : nullptr,
                    out + row * positions + q * nr, positions, fused ? &ep : nullptr);
      }
    }
  };

  if (direct || gathered) {
    parallel_for(static_cast<std::size_t>(base_items * splits), [&](std::size_t item) {
      const std::int64_t split = static_cast<std::int64_t>(item) % splits;
      std::int64_t rest = static_cast<std::int64_t>(item) / splits;
      const std::int64_t b = rest % blocks;
      rest /= blocks;
      const std::int64_t g = rest % s.group;
      const std::int64_t n = rest / s.group;
      thread_local Gather tables;
      if (gathered) gather_tables(n, g, tables);
      multiply(n, g, b * cols, std::min(cols, positions - b * cols), nullptr, split_begin(split),
               split_begin(split + 1), gathered ? &tables : nullptr);
    });
    return;
  }

  if (base_items == 1 && splits > 1) {
    // One block in all (one image, one group): pack it once, in parallel parts of whole panels,
    // into the calling thread's buffer, then multiply the row splits in parallel.  With one
    // thread nothing is packed twice; the result does not depend on the split.
    const std::int64_t panels = div_up(positions, nr);
    thread_local AlignedVector<float> shared;
    shared.resize(static_cast<std::size_t>(panels * k * nr));
    float* packed = shared.data();
    const std::int64_t parts = std::min<std::int64_t>(splits, panels);
    const std::int64_t per_part = div_up(panels, parts);
    parallel_for(static_cast<std::size_t>(div_up(panels, per_part)), [&](std::size_t part) {
      const std::int64_t q0 = static_cast<std::int64_t>(part) * per_part;
      const std::int64_t p0 = q0 * nr;
      pack(0, 0, p0, std::min(per_part * nr, positions - p0), packed + q0 * k * nr);
    });
    parallel_for(static_cast<std::size_t>(splits), [&](std::size_t split) {
      const std::int64_t sp = static_cast<std::int64_t>(split);
      multiply(0, 0, 0, positions, packed, split_begin(sp), split_begin(sp + 1), nullptr);
    });
    return;
  }

  parallel_for(static_cast<std::size_t>(base_items), [&](std::size_t item) {
    std::int64_t rest = static_cast<std::int64_t>(item);
    const std::int64_t b = rest % blocks;
    rest /= blocks;
    const std::int64_t g = rest % s.group;
    const std::int64_t n = rest / s.group;
    const std::int64_t p0 = b * cols;
    const std::int64_t nc = std::min(cols, positions - p0);
    thread_local AlignedVector<float> packed;
    packed.resize(static_cast<std::size_t>(div_up(nc, nr) * k * nr));
    pack(n, g, p0, nc, packed.data());
    multiply(n, g, p0, nc, packed.data(), 0, m_per_group, nullptr);
  });
}

}  // namespace onnxopt
