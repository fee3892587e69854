// What each benchmarked op must at least move and compute: the bytes read and written once and the
// useful floating-point operations (a multiply-add counts 2). Dividing them by a measured time gives
// GB/s and TFLOP/s; against the card's measured copy bandwidth and matmul rate they give the
// roofline floor (docs/bench.md). Shapes: B batch, L tokens, H heads, P head_dim, G groups,
// N state_size, Q chunk size.
#pragma once

#include <cstdint>
#include <string>

#include "engine/config.h"

namespace mambadiff::bench {

struct OpCost {
  int64_t bytes = 0;
  int64_t flops = 0;
};

struct ScanShape {
  int64_t batch = 1, tokens = 1, heads = 1, head_dim = 1, groups = 1, state_size = 1, chunk = 256;
  // "b8 L8192 h80 p64 g1 n128" (the chunk is reported apart); the same spelling as tools/bench_peers.py's.
  std::string label() const;
  // "b64 h80 p64 g1 n128": the decode step's shape (no tokens).
  std::string step_label() const;
};

// Element sizes in bytes of the tensors an op reads and writes.
struct ScanDtypes {
  int64_t x = 2;      // x, B, C (bf16 in the benchmark)
  int64_t dt = 4;     // dt (fp32, already discretized: softplus and clamp are a separate op)
  int64_t y = 4;      // y, as the op returns it
  int64_t state = 4;  // initial and final state (always fp32 here)
};

// The chunked SSD scan with an initial and a final state (engine/aten_ops.h ssd_chunk_scan).
OpCost ssd_chunk_scan_cost(const ScanShape& s, const ScanDtypes& d);

// One decode step of the recurrence (tokens = 1): the state is read and written once.
OpCost state_update_cost(const ScanShape& s, const ScanDtypes& d);

// One whole-model decode step at batch `batch` in a run dtype of `dtype_bytes`.
OpCost decode_step_cost(const Mamba2Config& c, int64_t batch, int64_t dtype_bytes);

// One iteration of the real-cache optimizer (batch 1): the decode step forward, the backward from
// the logits down to `first_delta_layer` (the lowest layer holding a Δ), and the cache's states
// restored from the base.
OpCost optimizer_step_cost(const Mamba2Config& c, int64_t first_delta_layer, int64_t dtype_bytes);

}  // namespace mambadiff::bench
