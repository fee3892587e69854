#include "bench/op_costs.h"

#include <fmt/format.h>

namespace mambadiff::bench {

std::string ScanShape::label() const {
  return fmt::format("b{} L{} h{} p{} g{} n{}", batch, tokens, heads, head_dim, groups, state_size);
}

std::string ScanShape::step_label() const {
  return fmt::format("b{} h{} p{} g{} n{}", batch, heads, head_dim, groups, state_size);
}

OpCost ssd_chunk_scan_cost(const ScanShape& s, const ScanDtypes& d) {
  const int64_t B = s.batch, L = s.tokens, H = s.heads, P = s.head_dim, G = s.groups, N = s.state_size, Q = s.chunk;
  const int64_t chunks = (L + Q - 1) / Q;  // the kernels compute whole Q x Q blocks, the last one padded
  OpCost c;
  c.bytes = B * L * H * P * d.x             // x read
            + 2 * B * L * G * N * d.x       // B and C read
            + B * L * H * d.dt              // dt read
            + 2 * H * 4                     // A and D read (fp32)
            + B * H * P * N * d.state       // initial state read
            + B * L * H * P * d.y           // y written
            + B * H * P * N * d.state;      // final state written
  // The matrix products of the chunked (SSD) algorithm, which is how REFERENCE.md counts mamba_ssm's
  // 109 TFLOP/s at b8 L8192 (348 GFLOP in 3.19 ms). Element-wise work (exp of the segment sums,
  // dt * x) is left out.
  c.flops = 2 * B * chunks * G * Q * Q * N   // C . B^T within each chunk, per group
            + 2 * B * chunks * H * Q * Q * P  // (C . B^T * decay) . (dt x) within each chunk, per head
            + 2 * B * L * H * N * P           // each chunk's state: B^T . (decay dt x), every token once
            + 2 * B * L * H * N * P           // the entering state's share of y: C . state, every token once
            + 2 * B * chunks * H * P * N      // the state passed between chunks: decay * s + chunk state
            + 2 * B * L * H * P;              // D * x
  return c;
}

OpCost state_update_cost(const ScanShape& s, const ScanDtypes& d) {
  const int64_t B = s.batch, H = s.heads, P = s.head_dim, G = s.groups, N = s.state_size;
  OpCost c;
  c.bytes = 2 * B * H * P * N * d.state     // state read and written (in place): all but a few percent
            + B * H * P * d.x               // x read
            + 2 * B * G * N * d.x           // B and C read
            + B * H * d.dt                  // dt read
            + 2 * H * 4                     // A and D read (fp32)
            + B * H * P * d.y;              // y written
  // Per state element: s * exp(dt A) (1 multiply), + (dt x) * B (1 multiply-add), y += C * s (1
  // multiply-add); per (b, h, p): + D * x (1 multiply-add).
  c.flops = 5 * B * H * P * N + 2 * B * H * P;
  return c;
}

namespace {

// The weights one layer reads in a forward (every one of them, once).
int64_t layer_weight_elements(const Mamba2Config& c) {
  const int64_t D = c.hidden_size, I = c.d_inner(), H = c.num_heads, C = c.conv_dim(), K = c.conv_kernel;
  return D                                      // block RMSNorm weight
         + c.in_proj_dim() * D                  // in_proj
         + (c.use_bias ? c.in_proj_dim() : 0)   // its bias
         + C * K + (c.use_conv_bias ? C : 0)    // depthwise conv and its bias
         + 3 * H                                // dt_bias, A_log, D
         + I                                    // gated RMSNorm weight
         + D * I + (c.use_bias ? D : 0);        // out_proj and its bias
}

// The matrix products of one layer's projections for one token (in_proj and out_proj).
int64_t layer_projection_flops(const Mamba2Config& c) { return 2 * c.in_proj_dim() * c.hidden_size + 2 * c.d_inner() * c.hidden_size; }

}  // namespace

OpCost decode_step_cost(const Mamba2Config& c, int64_t batch, int64_t dtype_bytes) {
  const int64_t D = c.hidden_size, V = c.vocab_size, H = c.num_heads, P = c.head_dim, N = c.state_size,
                C = c.conv_dim(), K = c.conv_kernel, layers = c.num_hidden_layers, b = batch;
  OpCost o;
  // The weight-read floor (REFERENCE.md: ~0.52 GB for the 130m shape in fp32): every layer's weights,
  // norm_f and lm_head once, and one embedding row per sequence (the embedding matrix is read whole
  // only as a tied lm_head, which lm_head's term counts).
  const int64_t weights = layers * layer_weight_elements(c) + D + V * D + b * D;
  o.bytes = weights * dtype_bytes
            + layers * 2 * b * H * P * N * 4            // each layer's SSM state (fp32) read and written
            + layers * 2 * b * C * K * dtype_bytes      // each layer's conv window read and written
            + b * V * 4;                                // the logits written (fp32)
  o.flops = b * layers * layer_projection_flops(c)     // in_proj, out_proj
            + 2 * b * V * D                            // lm_head
            + b * layers * 2 * C * K                   // the conv window . weights
            + b * layers * (5 * H * P * N + 2 * H * P);  // the state update (state_update_cost's count)
  // Norms, SiLU, softplus and the residual adds: O(D) per token, left out.
  return o;
}

OpCost optimizer_step_cost(const Mamba2Config& c, int64_t first_delta_layer, int64_t dtype_bytes) {
  const int64_t D = c.hidden_size, V = c.vocab_size, H = c.num_heads, P = c.head_dim, N = c.state_size,
                C = c.conv_dim(), K = c.conv_kernel, layers = c.num_hidden_layers;
  const int64_t tracked = layers - first_delta_layer;  // layers the gradient flows back through
  const int64_t state = H * P * N * 4;                  // one layer's SSM state in bytes (fp32, batch 1)
  OpCost o = decode_step_cost(c, 1, dtype_bytes);       // the forward: one decode step
  // Backward to the inputs (never to the weights: the model is fixed): lm_head and each tracked
  // layer's projections read their weights again and do the forward's products once more; each
  // tracked layer's state update reads its state and writes the gradient of its state.
  o.bytes += (V * D + tracked * layer_weight_elements(c)) * dtype_bytes + tracked * 2 * state;
  o.flops += 2 * V * D + tracked * (layer_projection_flops(c) + 5 * H * P * N);
  // The cache restored from the base before the step: every layer's state and conv window read and
  // written; base + Δ written into the Δ layer's state (base and Δ read, state written); Adam on Δ
  // (Δ, gradient and two moments read; Δ and the moments written).
  o.bytes += layers * 2 * (state + C * K * dtype_bytes) + 3 * state + 7 * state;
  return o;
}

}  // namespace mambadiff::bench
