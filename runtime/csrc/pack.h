// Packing of AddressConv's GEMM input: the displaced, strided input gathered straight into the
// micro-kernel's B panels ([K][nr] per panel of nr output positions, zero outside the image).
//
// Included by each ISA's file and instantiated there with that ISA's segment copy, so the
// packing runs with the same vector width as the micro-kernel.  Everything here has internal
// linkage and uses no std:: templates: an out-of-line copy compiled with AVX-512 flags must not
// be shared with (and picked by the linker for) code that runs on CPUs without AVX-512.
#pragma once

#include <cstdint>

#include "gemm.h"

namespace onnxopt {
namespace {

inline std::int64_t floor_div_i(std::int64_t a, std::int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline std::int64_t min_i(std::int64_t a, std::int64_t b) { return a < b ? a : b; }
inline std::int64_t max_i(std::int64_t a, std::int64_t b) { return a > b ? a : b; }

// Fills the packed B block of one work item (see PackJob in gemm.h).  `Segment` copies one
// run of a panel row: segment(dst, src, n, lo, hi) writes dst[t] = src[t] for lo <= t < hi and
// 0 for the other t < n (n <= nr; src[t] outside [lo, hi) must not be read).
//
// Channel-major: each input channel's plane is read front to back once per block (prefetcher
// friendly), its runs scattered into the panels.  The runs (one per output row a panel
// touches) are worked out once per block, so no division happens per channel.
template <typename Segment>
void pack_block(const PackJob& job, Segment segment) {
  const std::int64_t nr = job.nr;
  const std::int64_t wo = job.out_width;
  const std::int64_t sh = job.stride_h, sw = job.stride_w;
  const std::int64_t plane = job.height * job.width;
  PackRun* runs = job.runs;
  std::int64_t run_count = 0;
  for (std::int64_t q0 = 0; q0 < job.cols; q0 += nr) {
    const std::int64_t cols = min_i(nr, job.cols - q0);
    const std::int64_t p = job.p0 + q0;
    std::int64_t i = p / wo, j = p - i * wo;
    for (std::int64_t done = 0; done < cols;) {
      const std::int64_t n = min_i(wo - j, cols - done);
      runs[run_count++] = PackRun{static_cast<std::int32_t>(q0 / nr), static_cast<std::int32_t>(done),
                                  static_cast<std::int32_t>(n), done + n == cols ? 1 : 0, i, j};
      done += n;
      ++i;
      j = 0;
    }
  }
  const std::int64_t panel_stride = job.k * nr;
  for (std::int64_t kk = 0; kk < job.k; ++kk) {
    const std::int64_t src = job.address[3 * kk], dy = job.address[3 * kk + 1], dx = job.address[3 * kk + 2];
    const float* image = job.image + src * plane;
    // output columns whose input column j*sw + dx lies inside [0, width)
    const std::int64_t j_lo = max_i(0, -floor_div_i(dx, sw));
    const std::int64_t j_hi = min_i(wo, floor_div_i(job.width - 1 - dx, sw) + 1);
    float* channel = job.packed + kk * nr;
    for (std::int64_t r = 0; r < run_count; ++r) {
      const PackRun& run = runs[r];
      const std::int64_t n = run.count;
      const std::int64_t y = run.row * sh + dy;
      const bool row_inside = y >= 0 && y < job.height;
      const std::int64_t lo = row_inside ? min_i(n, max_i(0, j_lo - run.col)) : 0;
      const std::int64_t hi = row_inside ? max_i(lo, min_i(n, j_hi - run.col)) : 0;
      const float* row = image + (row_inside ? y : 0) * job.width + run.col * sw + dx;
      float* d = channel + run.panel * panel_stride + run.offset;
      if (sw == 1 || lo == hi) {
        segment(d, row, static_cast<int>(n), static_cast<int>(lo), static_cast<int>(hi));
      } else {
        for (std::int64_t t = 0; t < lo; ++t) d[t] = 0.0f;
        for (std::int64_t t = lo; t < hi; ++t) d[t] = row[t * sw];
        for (std::int64_t t = hi; t < n; ++t) d[t] = 0.0f;
      }
      if (run.last) {
        for (std::int64_t t = run.offset + n; t < nr; ++t) d[t - run.offset] = 0.0f;
      }
    }
  }
}

}  // namespace
}  // namespace onnxopt
