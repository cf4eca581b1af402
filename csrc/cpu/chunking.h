// Fixed-size work items over a task-major (T, inner) view. Each item covers one task's slice, so a task's
// gates are constant inside it, and reductions write one partial per item: the result does not depend on
// the number of threads (deterministic).
#pragma once
#include <algorithm>
#include <cstdint>

namespace mtl_ops {

struct TaskChunks {
  static constexpr int64_t kChunk = int64_t(1) << 15;  // elements per work item
  int64_t inner;
  int64_t per_task;

  explicit TaskChunks(int64_t inner_) : inner(inner_), per_task(std::max<int64_t>(1, (inner_ + kChunk - 1) / kChunk)) {}
  int64_t task(int64_t item) const { return item / per_task; }
  int64_t begin(int64_t item) const { return task(item) * inner + (item % per_task) * kChunk; }
  int64_t length(int64_t item) const { return std::min(kChunk, inner - (item % per_task) * kChunk); }
};

}  // namespace mtl_ops
