// A strided pair's first conv computed only where its second conv reads it.
//
// A second conv of strides (sh, sw) reads the first's output at rows sh * i + dy and columns
// sw * j + dx, (dy, dx) in [-1, 1]^2 its input channel's displacement: each input channel of it
// sees one residue class (dy mod sh, dx mod sw) of the first's positions and no other.  In a
// strided ShiftNet block (stride 2, nine shift groups) that is four classes of a quarter of the
// positions each, so the first conv computed whole does four times the work that is read (and a
// stride-2 pair with no shifts at all reads one class).
//
// The plan computes, per class (py, px), the first conv's output channels that are read in that
// class as one blocked AddressConv with the first's own table and stride (first's * second's),
// started at X's cell (first's stride * (py, px)), into that class's own channel blocks of a
// "phase image" of h2 x w2 positions, the pair's output size; the second conv then runs unstrided
// on the phase image, input channel k displaced by ((dy - py) / sh, (dx - px) / sw): in {-1, 0}
// along a strided axis, dy (or dx) itself along an unstrided one.  Every output sums the same
// products in the same order as the pair: the result is bit-identical.
// Measured (one thread, C++ loop): 32 -> 96 -> 64 @32 59 -> 36 us, 64 -> 192 -> 128 @16 59 -> 32,
// @56 723 -> 405, 128 -> 384 -> 256 @28 702 -> 373 (see runtime/README.md).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "blocked_conv.h"

namespace onnxopt {

class PolyphasePlan {
 public:
  // Null unless the pair can run this way at no more than half the first conv's work: the second
  // conv strided and every channel it reads a real output channel of the first.
  static std::shared_ptr<const PolyphasePlan> make(const BlockedStage& first, const BlockedStage& second);

  // Whether an input of this size runs this way: the first conv's output rows and columns divide
  // by the second's strides, so that every class has the output's h2 x w2 positions.
  bool fits(const BlockedInput& in) const;
  // Channel blocks of the phase image: the classes' blocks, together.
  std::int64_t phase_blocks() const { return blocks_; }
  // Floats of one image's phase image.
  std::size_t phase_floats(const BlockedInput& in) const;
  // One image of the pair (in.batch == 1); `phase` holds phase_floats(in) floats of scratch.
  // first and second are the stages the plan was made from.
  void run(const BlockedInput& in, const float* x, const BlockedStage& first, const BlockedStage& second,
           const float* residual, float* phase, float* y, const GemmIsa& isa, const ParallelFor& parallel_for) const;

 private:
  struct Class {
    BlockedWeights weights;     // the first conv's rows of the channels read in this class
    AlignedVector<float> bias;  // theirs, padded to whole blocks
    std::int64_t channels = 0;
    std::int64_t phase_block = 0;             // its first channel block in the phase image
    std::int64_t row_offset = 0, col_offset = 0;  // X's cell its first output position reads at (0, 0)
    BlockedPlanCache plans;
  };
  std::int64_t first_sh_ = 1, first_sw_ = 1, sh_ = 1, sw_ = 1, blocks_ = 0;
  std::vector<std::unique_ptr<Class>> classes_;
  std::vector<std::int32_t> second_address_;  // the second conv's table over the phase image
  mutable BlockedPlanCache second_plans_;
};

// The plan of a pair whose stages are constant (the kernel passes one only then): made on first
// use, then kept, the null "does not apply" included.  (Made per run instead, with its fresh
// weight copies and row plans, a 32 -> 96 -> 64 @32 pair took 54 us against 36 with a kept plan
// and 59 by rows.)
class PolyphaseCache {
 public:
  std::shared_ptr<const PolyphasePlan> get(const BlockedStage& first, const BlockedStage& second);

 private:
  std::mutex mutex_;
  bool made_ = false;
  std::shared_ptr<const PolyphasePlan> plan_;
};

}  // namespace onnxopt
