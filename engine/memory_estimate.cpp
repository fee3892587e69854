#include "engine/memory_estimate.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <limits>

#include "engine/checked_math.h"
#include "engine/errors.h"

namespace mambadiff {

namespace {

constexpr const char* kLimitVariable = "MAMBADIFF_MEMORY_LIMIT_BYTES";

// The scan's segment-matrix passes each hold a [B, H, chunks, Q, Q] tensor at once: the expanded
// dA, its masked cumsum (seg_sums), the masked/clamped copy (seg), C.B, and CB * exp(seg) with its
// exp (engine/ssd_chunk_scan.cpp).
constexpr uint64_t kSegmentMatrices = 6;
// Per-token copies of x and of the head-repeated B and C the scan makes (float conversion, pad,
// x*dt, y_diag, y_off, the sum).
constexpr uint64_t kScanCopies = 4;

std::string human(uint64_t bytes) {
  if (bytes == std::numeric_limits<uint64_t>::max()) return "more than 2^64 bytes";
  return fmt::format("{:.3g} GB", static_cast<double>(bytes) / 1e9);
}

}  // namespace

void MemoryEstimate::add(const std::string& what, const std::vector<int64_t>& dims, uint64_t itemsize) {
  uint64_t term = itemsize;
  for (int64_t d : dims) term = saturating_mul(term, static_cast<uint64_t>(std::max<int64_t>(d, 0)));
  add_bytes(what, term);
}

void MemoryEstimate::add_bytes(const std::string& what, uint64_t term) {
  bytes = saturating_add(bytes, term);
  if (term > largest_bytes) {
    largest_bytes = term;
    largest = what;
  }
}

MemoryEstimate estimate_run_memory(const Mamba2Config& c, torch::ScalarType dtype, int64_t batch,
                                   const std::vector<int64_t>& forward_tokens, bool keep_outputs) {
  MemoryEstimate m;
  // The scan and the norms compute in at least fp32 whatever the activations' dtype.
  const uint64_t item = std::max<uint64_t>(c10::elementSize(dtype), 4);
  constexpr uint64_t kRef = 8;  // the reference's float64
  const int64_t L = c.num_hidden_layers, V = c.vocab_size, D = c.hidden_size, H = c.num_heads, P = c.head_dim,
                N = c.state_size, Q = c.chunk_size, K = c.conv_kernel;
  const int64_t I = c.d_inner(), C = c.conv_dim(), E = c.in_proj_dim();

  // Weights, per copy (in elements): embeddings (+ lm_head unless tied) and per layer in_proj,
  // conv, out_proj and the vectors (2 norms of D, in_proj bias of E, conv bias of C, dt_bias, A_log
  // and D of H, the gated norm of I, out_proj bias of D).
  MemoryEstimate elements;
  elements.add("embeddings", {V, D}, 1);
  if (!c.tie_word_embeddings) elements.add("lm_head", {V, D}, 1);
  elements.add("in_proj weights", {L, E, D}, 1);
  elements.add("out_proj weights", {L, D, I}, 1);
  elements.add("conv weights", {L, C, K + 1}, 1);
  elements.add("layer vectors", {L, 3, D}, 1);
  elements.add("layer vectors", {L, E}, 1);
  elements.add("layer vectors", {L, 3, H}, 1);
  elements.add("layer vectors", {L, I}, 1);
  const std::string weights = fmt::format("the weights (vocab_size={}, hidden_size={}, {} layers)", V, D, L);
  m.add_bytes(weights + ", stored and the path's copy", saturating_mul(elements.bytes, 2 * item));
  m.add_bytes(weights + ", the reference's float64 copy", saturating_mul(elements.bytes, kRef));

  // The cache: one live, in the path's dtype.
  m.add("the cache", {L, batch, C * K + H * P * N}, item);

  // The largest forward's working set (one at a time; one layer at a time).
  int64_t longest = 0;
  for (int64_t t : forward_tokens) longest = std::max(longest, t);
  if (longest > 0) {
    const int64_t chunks = longest / Q + (longest % Q != 0);
    const uint64_t padded = saturating_mul(static_cast<uint64_t>(chunks), static_cast<uint64_t>(Q));
    const int64_t Tp = static_cast<int64_t>(std::min<uint64_t>(padded, INT64_MAX));
    m.add(fmt::format("a forward's in_proj and conv activations ({} tokens)", longest), {batch, longest, E + 2 * C}, item);
    m.add(fmt::format("the chunked scan's per-token copies ({} tokens padded to {} for chunk_size={})", longest, Tp, Q),
          {static_cast<int64_t>(kScanCopies), batch, Tp, H, P + 2 * N}, item);
    m.add(fmt::format("the chunked scan's [B, H, chunks, chunk_size, chunk_size] segment matrices (batch {}, "
                      "{} chunks, chunk_size={})",
                      batch, chunks, Q),
          {static_cast<int64_t>(kSegmentMatrices), batch, H, chunks, Q, Q}, item);
    m.add(fmt::format("a forward's logits ({} tokens x vocab_size={})", longest, V), {batch, longest, V}, item);
  }

  // The results a scenario run keeps: per forward its logits and layer outputs, per op the cache.
  if (keep_outputs) {
    int64_t total = 0;
    for (int64_t t : forward_tokens) total = checked_add(total, t).value_or(INT64_MAX);
    const int64_t ops = static_cast<int64_t>(forward_tokens.size());
    const std::string tokens_what = fmt::format("{} forward ops of {} tokens in all", ops, total);
    m.add(fmt::format("the kept logits ({} x vocab_size={})", tokens_what, V), {batch, total, V}, item + kRef);
    m.add(fmt::format("the kept layer outputs ({} x {} layers x hidden_size={})", tokens_what, L, D),
          {batch, total, L, D}, item + kRef);
    m.add(fmt::format("the cache kept after each of {} forward ops", ops), {ops, L, batch, C * K + H * P * N},
          item + kRef);
  }
  return m;
}

uint64_t memory_limit_bytes() {
  if (const char* env = std::getenv(kLimitVariable)) {
    errno = 0;
    char* end = nullptr;
    const unsigned long long v = std::strtoull(env, &end, 10);
    if (errno != 0 || end == env || *end != '\0' || v == 0 || env[0] == '-' || env[0] == '+') {
      throw InputError(fmt::format("{}='{}': expected a positive integer (bytes)", kLimitVariable, env));
    }
    return v;
  }
  const long pages = ::sysconf(_SC_PHYS_PAGES), page_size = ::sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return std::numeric_limits<uint64_t>::max();  // unknown: no limit
  return saturating_mul(static_cast<uint64_t>(pages), static_cast<uint64_t>(page_size)) / 2;
}

void require_memory(const MemoryEstimate& estimate, const std::string& context) {
  const uint64_t limit = memory_limit_bytes();
  if (estimate.bytes <= limit) return;
  throw InputError(fmt::format(
      "{}: the run needs an estimated {} of memory, over the limit of {} (largest: {}, {}); shorten the "
      "token lists or the batch, or raise {} (default: half the physical memory)",
      context, human(estimate.bytes), human(limit), estimate.largest, human(estimate.largest_bytes), kLimitVariable));
}

}  // namespace mambadiff
