// Grid sizes of the element-wise and grid-stride kernels of every kernels/ file, defined
// once. Internal to kernels/src.
#pragma once

#include <algorithm>
#include <cstdint>

namespace otgpu::kernels::detail {

/// Blocks of `threads` threads for a grid-stride loop over `total` elements: enough to
/// give every element a thread, at least one, at most `max_blocks` (the loop strides
/// over the rest; the cap keeps launches of huge arrays from queueing millions of
/// blocks that each do one element).
inline unsigned grid_stride_blocks(std::int64_t total, int threads,
                                   std::int64_t max_blocks = 65536) {
  const std::int64_t blocks = (total + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<std::int64_t>(blocks, 1, max_blocks));
}

}  // namespace otgpu::kernels::detail
