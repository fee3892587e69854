// The fused CUDA kernels of the `cuda` path (SPEC §4): one launch per logical kernel of a Mamba2
// layer, forward and (for what the real-cache optimizer differentiates) backward. Device code
// here knows nothing of torch: pointers are raw device pointers, `Act` is the activation dtype of
// the run (float32 or bfloat16), reductions and the SSM state are fp32. Every launcher returns a
// cudaError_t as int (0 = success) and runs on `stream` (a cudaStream_t).
//
// Shapes use the names of engine/aten_ops.h: B batch, T tokens, H heads, P head_dim, G groups,
// N state_size, C conv_dim, K conv_kernel, I d_inner. Many inputs are column slices of the
// in_proj output [B, T, I + C + H]: they are given as a base pointer plus the stride between
// consecutive tokens (`token_stride`, in elements) — rows are (b, t) pairs, b-major.
//
// Ops and their files (the names of engine/aten_ops.h): rms_norm and gated_rms_norm in
// rms_norm.cu, causal_conv1d in causal_conv1d.cu, discretize_dt in discretize_dt.cu,
// ssd_chunk_scan and selective_state_update_backward in ssd_chunk_scan.cu, the fused decode step
// (conv + dt + state update, forward and backward) in decode_step.cu.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mambadiff::kernels {

enum class Act { kFloat32, kBFloat16 };

// out = weight * RMSNorm(x) over the last dimension `dim`, fp32 reduction; rstd[rows] (fp32) is
// kept for the backward. x and out are contiguous [rows, dim]; `x_act` may differ from `act`
// (the fp32 residual stream normed into bf16 weights).
int rms_norm_forward(Act x_act, Act act, const void* x, const void* weight, void* out, float* rstd, int64_t rows,
                     int64_t dim, float eps, void* stream);
// grad_x [rows, dim] in x_act, from grad_out (act). Weights are constants (no weight gradient).
int rms_norm_backward(Act x_act, Act act, const void* x, const void* weight, const float* rstd, const void* grad_out,
                      void* grad_x, int64_t rows, int64_t dim, void* stream);

// out = weight * RMSNorm_group(y * SiLU(gate)), groups of `group_size` channels of I.
//   y: [rows, I] fp32 contiguous   gate: rows with `gate_token_stride`   out: [rows, I] act
//   rstd: [rows, I / group_size] fp32
int gated_rms_norm_forward(Act act, const float* y, const void* gate, int64_t gate_token_stride, const void* weight,
                           void* out, float* rstd, int64_t rows, int64_t channels, int64_t group_size, float eps,
                           void* stream);
// grad_y [rows, I] fp32 and grad_gate [rows, I] act (contiguous).
int gated_rms_norm_backward(Act act, const float* y, const void* gate, int64_t gate_token_stride, const void* weight,
                            const float* rstd, const void* grad_out, float* grad_y, void* grad_gate, int64_t rows,
                            int64_t channels, int64_t group_size, void* stream);

// Causal depthwise conv1d + SiLU over T tokens with the K previous inputs in `window`.
//   x: [B, T, C] rows with `x_token_stride`   window: [B, C, K] contiguous (zeros = no history)
//   weight: [C, K]   bias: [C] or null   out: [B, T, C] contiguous   new_window: [B, C, K] (may
//   be `window` itself: each thread reads its window before writing)   pre: [B, T, C] fp32
//   pre-activation for the backward, or null. K <= 8.
int causal_conv1d_forward(Act act, const void* x, int64_t x_token_stride, const void* window, const void* weight,
                          const void* bias, void* out, void* new_window, float* pre, int64_t batch, int64_t tokens,
                          int64_t channels, int64_t kernel_size, void* stream);
// grad_x [B, T, C] contiguous act, from grad_out (act, contiguous) and pre. The window is a
// constant (the cache's history carries no gradient).
int causal_conv1d_backward(Act act, const void* grad_out, const float* pre, const void* weight, void* grad_x,
                           int64_t batch, int64_t tokens, int64_t channels, int64_t kernel_size, void* stream);

// dt = clamp(softplus(dt_raw + dt_bias), lo, hi) in fp32 (torch's softplus: linear above 20).
//   dt_raw: [B, T, H] rows with `token_stride`   dt_bias: [H] fp32   dt: [B, T, H] fp32 contiguous
int discretize_dt_forward(Act act, const void* dt_raw, int64_t token_stride, const float* dt_bias, float* dt,
                          int64_t rows, int64_t heads, float lo, float hi, void* stream);
// grad_raw [B, T, H] act contiguous (zero where the clamp was active, as torch's clamp).
int discretize_dt_backward(Act act, const void* dt_raw, int64_t token_stride, const float* dt_bias,
                           const float* grad_dt, void* grad_raw, int64_t rows, int64_t heads, float lo, float hi,
                           void* stream);

// ssd_chunk_scan: the op of engine/aten_ops.h (y and final state over T tokens from an initial
// state), computed here as the selective scan sequential in time (not in chunks), fp32 state in registers:
//   s_t = exp(dt_t A) s_{t-1} + dt_t x_t ⊗ B_t;  y_t = C_t · s_t + D x_t   (head h uses group h/(H/G))
//   x: [B, T, H, P], Bm/Cm: [B, T, G, N] as rows with `xbc_token_stride` (slices of the conv
//   output)   dt: [B, T, H] fp32   A: [H] fp32   D: [H] fp32 (dt_bias, A_log and D stay fp32 in every
//   run dtype, engine/checkpoint.cpp)   initial: [B, H, P, N] fp32 or null
//   (zeros)   y: [B, T, H, P] fp32   final_state: [B, H, P, N] fp32. N <= 256.
struct ScanShape {
  int64_t batch, tokens, heads, head_dim, groups, state_size;
};
int ssd_chunk_scan_forward(Act act, const ScanShape& s, const void* x, const void* Bm, const void* Cm,
                     int64_t xbc_token_stride, const float* dt, const float* A, const float* D, const float* initial,
                     float* y, float* final_state, void* stream);
// ssd_chunked_scan: the same scan in the chunked SSD form on tensor cores (kernels/ssd_chunked_scan.cu),
// for T > 1 (prefill, continue). Parameters in one struct (flash-attention's habit); shapes as above.
//   dt: [B, T, H] fp32 rows `dt_token_stride` apart, raw: dt' = clamp(softplus(dt + dt_bias), dt_min,
//   dt_max), with dt_bias (null = none), the softplus and the limits (±inf = none) each optional.
//   D: [H] or null. chunk_size: any positive number (the last chunk may be shorter).
//   workspace: ssd_chunked_scan_workspace_bytes() of device memory, 256-byte aligned.
// fp32 accumulation throughout; the products are fp32 FMAs for fp32 inputs; for bf16 inputs, TF32
// tensor cores with every computed fp32 operand split hi + lo (~21 bits a product), or with
// `bf16_products`, bf16 tensor cores with every computed operand rounded once to bf16 (as the
// deployed Triton kernels do). Any length: every offset is 64-bit.
struct ChunkedScanParams {
  Act act = Act::kFloat32;
  ScanShape shape{};
  int64_t chunk_size = 256;
  const void* x = nullptr;
  const void* Bm = nullptr;
  const void* Cm = nullptr;
  int64_t xbc_token_stride = 0;
  const float* dt = nullptr;
  int64_t dt_token_stride = 0;
  const float* dt_bias = nullptr;
  bool dt_softplus = false;
  float dt_min = -__builtin_huge_valf();
  float dt_max = __builtin_huge_valf();
  const float* A = nullptr;
  const float* D = nullptr;
  const float* initial = nullptr;  // [B, H, P, N] or null (zeros)
  float* y = nullptr;              // [B, T, H, P]
  float* final_state = nullptr;    // [B, H, P, N]
  bool bf16_products = false;      // bf16 runs only (see above)
  // Profiling only: launch the first `stages` of the five kernels (cumsum, C·Bᵀ, chunk states, state
  // passing, output), so that timing 1, 1-2, ... 1-5 gives each kernel's share. Below 5 the outputs
  // are incomplete.
  int stages = 5;
};
size_t ssd_chunked_scan_workspace_bytes(const ScanShape& s, int64_t chunk_size);
int ssd_chunked_scan_forward(const ChunkedScanParams& params, void* workspace, void* stream);

// The backward of a one-token scan (the decode step the optimizer differentiates), T == 1.
//   state: the state before the step   grad_y: [B, H, P] fp32   grad_state_out: [B, H, P, N] fp32
//   or null   Outputs: grad_x [B, H, P] act, grad_dt [B, H] fp32, grad_B_head/grad_C_head
//   [B, H, N] fp32 (per head: the caller sums the heads of a group), grad_state [B, H, P, N] fp32.
int selective_state_update_backward(Act act, const ScanShape& s, const void* x, const void* Bm, const void* Cm,
                      int64_t xbc_token_stride, const float* dt, const float* A, const float* D, const float* state,
                      const float* grad_y, const float* grad_state_out, void* grad_x, float* grad_dt,
                      float* grad_B_head, float* grad_C_head, float* grad_state, void* stream);

// The decode step of a layer's mixer in one kernel (kernels/decode_step.cu): the causal conv's
// update (window shifted in place) + SiLU, dt = clamp(softplus(dt_raw + dt_bias), dt_min, dt_max),
// and the state update, T == 1 — what causal_conv1d_forward, discretize_dt_forward and the
// decode step of ssd_chunk_scan_forward compute one after the other, bit for bit (the conv output
// rounded to `act` as the separate kernels store it).
//   xbc_raw: batch b's pre-conv row [x (H·P) | B (G·N) | C (G·N)] at xbc_raw + b·xbc_stride (a column
//   slice of in_proj's output)   dt_raw: [H] at dt_raw + b·dt_stride   window: [B, C, K] act, updated
//   in place   conv_weight: [C, K] act   conv_bias: [C] act or null   dt_bias, A, D: [H] fp32
//   state_in: [B, H, P, N] fp32   state_out: the new state (may be state_in: in place)   y: [B, H, P]
//   fp32   saved_state: a copy of state_in for a backward, or null   saved_pre: [B, C] fp32 conv
//   pre-activation for a backward, or null.
// Limits: K <= 8, N % 4 == 0, N <= 256, 16-byte aligned states, batch × groups <= 65536 (the kernel
// counts, per (batch, group), the blocks done reading the shared B/C window: the last one shifts it).
// Not reentrant across concurrent streams on one device (the counters are the kernel's own).
struct DecodeStepParams {
  Act act = Act::kFloat32;
  ScanShape shape{};  // tokens == 1
  int64_t conv_kernel = 0;
  const void* xbc_raw = nullptr;
  int64_t xbc_stride = 0;
  const void* dt_raw = nullptr;
  int64_t dt_stride = 0;
  void* window = nullptr;
  const void* conv_weight = nullptr;
  const void* conv_bias = nullptr;
  const float* dt_bias = nullptr;
  float dt_min = 0.0f;
  float dt_max = __builtin_huge_valf();
  const float* A = nullptr;
  const float* D = nullptr;
  const float* state_in = nullptr;
  float* state_out = nullptr;
  float* y = nullptr;
  float* saved_state = nullptr;
  float* saved_pre = nullptr;
};
constexpr int64_t kDecodeStepMaxBatchGroups = 65536;
// True when the fused kernel takes this shape (else run the three kernels).
bool decode_step_supported(const ScanShape& s, int64_t conv_kernel);
int decode_step_forward(const DecodeStepParams& params, void* stream);

// Its backward in one kernel, from what the forward saved: grad_xbc_raw [B, C] act (x, B and C
// through SiLU and the conv's newest tap; the window gets no gradient), grad_dt_raw [B, H] act (zero
// where the clamp was active), grad_state [B, H, P, N] fp32 (of state_in). The heads of a group add
// their B and C gradients in head order (workspace: [B, H, 2N] fp32, the per-head terms).
struct DecodeStepBackwardParams {
  Act act = Act::kFloat32;
  ScanShape shape{};
  int64_t conv_kernel = 0;
  const float* saved_pre = nullptr;    // [B, C]
  const float* saved_state = nullptr;  // [B, H, P, N]
  const void* dt_raw = nullptr;
  int64_t dt_stride = 0;
  const void* conv_weight = nullptr;
  const float* dt_bias = nullptr;
  float dt_min = 0.0f;
  float dt_max = __builtin_huge_valf();
  const float* A = nullptr;
  const float* D = nullptr;
  const float* grad_y = nullptr;          // [B, H, P]
  const float* grad_state_out = nullptr;  // [B, H, P, N] or null
  void* grad_xbc_raw = nullptr;           // [B, C] contiguous
  void* grad_dt_raw = nullptr;            // [B, H] contiguous
  float* grad_state = nullptr;            // [B, H, P, N]
  float* workspace = nullptr;             // [B, H, 2N]
};
int decode_step_backward(const DecodeStepBackwardParams& params, void* stream);

// The real-cache optimizer's statistics of one Δ in one kernel (kernels/delta_statistics.cu):
//   stats[4] float64 = {*loss, worst rank, worst margin, ‖Δ‖₂} where, per logits row r (fp32 [vocab]),
//   rank = 1 + #{j : logits[j] > logits[target]} (a tie: rank 1 and margin 0; vocab + 1 when any
//   logit is not finite) and margin = logits[target] − max_{j ≠ target} logits[j] (NaN-propagating);
//   worst = the largest rank and the smallest margin over the rows; ‖Δ‖₂ over every Δ tensor (fp32).
// partials: 2·rows + deltas doubles of device memory. Not reentrant across concurrent streams.
struct DeltaStatisticsParams {
  static constexpr int kMaxRows = 64, kMaxDeltas = 64;
  int rows = 0;
  const float* logits[kMaxRows] = {};
  int64_t target[kMaxRows] = {};
  int64_t vocab = 0;
  int deltas = 0;
  const float* delta[kMaxDeltas] = {};
  int64_t delta_numel[kMaxDeltas] = {};
  const float* loss = nullptr;  // [] fp32
  double* partials = nullptr;
  double* stats = nullptr;
};
int delta_statistics(const DeltaStatisticsParams& params, void* stream);

// The decode step's matrix-vector products with their norms folded in (kernels/decode_gemv.cu),
// for one token per sequence where nothing records a gradient. Weights [out_features, cols]
// row-major in `act`, 16-byte aligned rows (cols % 4 fp32, % 8 bf16); cols <= kDecodeGemvMaxCols.
constexpr int64_t kDecodeGemvMaxCols = 8192;  // the normalized vector in shared memory (32 KB)
// proj[b] = weight · (norm_weight * RMSNorm(x[b] rounded to act)) + bias: rms_norm + in_proj.
//   x: [batch, dim] contiguous in x_act (the residual stream)   out: [batch, out_features] act   bias: or null
struct NormInProjParams {
  Act x_act = Act::kFloat32, act = Act::kFloat32;
  int64_t batch = 0, dim = 0, out_features = 0;
  const void* x = nullptr;
  const void* norm_weight = nullptr;
  float eps = 1e-5f;
  const void* weight = nullptr;
  const void* bias = nullptr;
  void* out = nullptr;
};
int norm_in_proj_forward(const NormInProjParams& params, void* stream);
// out[b] = residual[b] + weight · (norm_weight * RMSNorm_group(y[b] * SiLU(gate[b]))): gated_rms_norm +
// out_proj + the residual.   y: [batch, channels] fp32   gate: rows `gate_stride` apart (act)
// residual, out: [batch, out_features] in residual_act (fp32, or act); out may not alias residual.
struct GatedNormOutProjParams {
  Act act = Act::kFloat32, residual_act = Act::kFloat32;
  int64_t batch = 0, channels = 0, group_size = 0, out_features = 0;
  const float* y = nullptr;
  const void* gate = nullptr;
  int64_t gate_stride = 0;
  const void* norm_weight = nullptr;
  float eps = 1e-5f;
  const void* weight = nullptr;
  const void* residual = nullptr;
  void* out = nullptr;
};
int gated_norm_out_proj_forward(const GatedNormOutProjParams& params, void* stream);

}  // namespace mambadiff::kernels
