#include "address_conv.h"

#include <algorithm>
#include <cstring>

namespace onnxopt {
namespace {

// floor(a / b) and ceil(a / b) for b > 0 and any sign of a.
std::int64_t floor_div(std::int64_t a, std::int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return -floor_div(-a, b); }

// Writes the `count` input values that output positions [p, p + count) of one image read for
// one input channel: row i = p / Wo, column j = p % Wo reads plane[(i*sh + dy) * W + j*sw + dx],
// zero where that falls outside the plane.
void gather_line(const AddressConvShape& s, const float* plane, const Address& a, std::int64_t p,
                 std::int64_t count, float* out) {
  const std::int64_t wo = s.out_width();
  // Output columns whose input column lies inside [0, W).
  const std::int64_t j_lo = std::max<std::int64_t>(0, ceil_div(-a.dx, s.stride_w));
  const std::int64_t j_hi = std::min<std::int64_t>(wo, floor_div(s.width - 1 - a.dx, s.stride_w) + 1);
  const std::int64_t end = p + count;
  while (p < end) {
    const std::int64_t i = p / wo;
    const std::int64_t j0 = p - i * wo;
    const std::int64_t j1 = std::min(wo, j0 + (end - p));
    const std::int64_t n = j1 - j0;
    const std::int64_t y = i * s.stride_h + a.dy;
    if (y < 0 || y >= s.height || j_lo >= j_hi) {
      std::fill(out, out + n, 0.0f);
    } else {
      const float* row = plane + y * s.width + a.dx;
      const std::int64_t lo = std::clamp(j_lo, j0, j1);
      const std::int64_t hi = std::clamp(j_hi, lo, j1);
      std::fill(out, out + (lo - j0), 0.0f);
      if (s.stride_w == 1) {
        std::memcpy(out + (lo - j0), row + lo, sizeof(float) * static_cast<std::size_t>(hi - lo));
      } else {
        const std::int64_t sw = s.stride_w;
        float* o = out - j0;
        for (std::int64_t j = lo; j < hi; ++j) o[j] = row[j * sw];
      }
      std::fill(out + (hi - j0), out + n, 0.0f);
    }
    out += n;
    p += n;
  }
}

// Output positions per work item: the packed panel (K x cols floats) stays within ~192 KiB,
// between one and eight micro-kernel panels wide.
std::int64_t block_columns(std::int64_t k, std::int64_t positions, const GemmIsa& isa) {
  const std::int64_t budget = (192 * 1024) / (static_cast<std::int64_t>(sizeof(float)) * k * isa.nr);
  const std::int64_t panels = std::clamp<std::int64_t>(budget, 1, 8);
  const std::int64_t needed = (positions + isa.nr - 1) / isa.nr;
  return std::min(panels, needed) * isa.nr;
}

}  // namespace

PackedWeights::PackedWeights(const float* w, std::int64_t out_channels, std::int64_t k_per_group,
                             std::int64_t group, const GemmIsa& isa)
    : data_(static_cast<std::size_t>(out_channels * k_per_group)), k_(k_per_group) {
  const std::int64_t per_group = out_channels / group;
  for (std::int64_t g = 0; g < group; ++g) {
    for (std::int64_t m = 0; m < per_group; m += isa.mr) {
      const std::int64_t row = g * per_group + m;
      const std::int64_t mr = std::min<std::int64_t>(isa.mr, per_group - m);
      float* dst = data_.data() + row * k_;
      for (std::int64_t k = 0; k < k_; ++k)
        for (std::int64_t r = 0; r < mr; ++r) dst[k * mr + r] = w[(row + r) * k_ + k];
    }
  }
}

std::string validate_addresses(const std::vector<Address>& address, std::int64_t src_channels) {
  for (std::size_t k = 0; k < address.size(); ++k) {
    if (address[k].src < 0 || address[k].src >= src_channels) {
      return "address[" + std::to_string(k) + ", 0] = " + std::to_string(address[k].src) +
             " is not a channel of X (X has " + std::to_string(src_channels) + " channels)";
    }
  }
  return {};
}

void address_conv(const AddressConvShape& s, const float* x, const PackedWeights& weights,
                  const float* bias, const std::vector<Address>& address, float* y,
                  const GemmIsa& isa, const ParallelFor& parallel_for) {
  const std::int64_t positions = s.out_height() * s.out_width();
  const std::int64_t k = s.in_channels / s.group;
  const std::int64_t m_per_group = s.out_channels / s.group;
  const std::int64_t cols = block_columns(k, positions, isa);
  const std::int64_t blocks = (positions + cols - 1) / cols;
  const std::int64_t plane = s.height * s.width;
  const std::size_t items = static_cast<std::size_t>(s.batch * s.group * blocks);
  if (items == 0 || m_per_group == 0) return;

  parallel_for(items, [&](std::size_t item) {
    const std::int64_t b = static_cast<std::int64_t>(item) % blocks;
    const std::int64_t g = (static_cast<std::int64_t>(item) / blocks) % s.group;
    const std::int64_t n = static_cast<std::int64_t>(item) / (blocks * s.group);
    const std::int64_t p0 = b * cols;
    const std::int64_t nc = std::min(cols, positions - p0);
    const std::int64_t panels = (nc + isa.nr - 1) / isa.nr;

    thread_local std::vector<float> packed;
    thread_local std::vector<float> line;
    packed.resize(static_cast<std::size_t>(panels * k * isa.nr));
    line.resize(static_cast<std::size_t>(panels * isa.nr));
    std::fill(line.begin() + nc, line.end(), 0.0f);  // zero columns past the end stay zero

    const float* image = x + n * s.src_channels * plane;
    for (std::int64_t kk = 0; kk < k; ++kk) {
      const Address& a = address[static_cast<std::size_t>(g * k + kk)];
      gather_line(s, image + a.src * plane, a, p0, nc, line.data());
      for (std::int64_t q = 0; q < panels; ++q)
        std::memcpy(packed.data() + (q * k + kk) * isa.nr, line.data() + q * isa.nr, sizeof(float) * isa.nr);
    }

    float* out = y + (n * s.out_channels) * positions + p0;
    for (std::int64_t m = 0; m < m_per_group; m += isa.mr) {
      const std::int64_t row = g * m_per_group + m;
      const int mr = static_cast<int>(std::min<std::int64_t>(isa.mr, m_per_group - m));
      const float* a = weights.block(row);
      for (std::int64_t q = 0; q < panels; ++q) {
        const int cols_here = static_cast<int>(std::min<std::int64_t>(isa.nr, nc - q * isa.nr));
        isa.tile(static_cast<int>(k), a, mr, packed.data() + q * k * isa.nr, cols_here,
                 bias ? bias + row : nullptr, out + row * positions + q * isa.nr, positions);
      }
    }
  });
}

}  // namespace onnxopt
