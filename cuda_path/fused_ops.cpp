#include "cuda_path/fused_ops.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <fmt/format.h>

#include <array>
#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <string>

#include "engine/errors.h"

#include "kernels/fused_kernels.h"

namespace mambadiff::fused {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace k = kernels;

// ---- launch checks ---------------------------------------------------------------------------

// The checks every launch makes before it hands raw pointers to a kernel (the habit of
// flash-attention's CHECK_DEVICE / CHECK_SHAPE / CHECK_CONTIGUOUS): a tensor on the wrong device,
// of the wrong dtype or shape would be read or written out of bounds by the kernel. Each failure
// names the op and the tensor. A caller's wrong tensor is an internal error (c10::Error); a model
// past a kernel's limit (state_size, head_dim, conv_kernel) is an InputError naming the config key.
class LaunchCheck {
 public:
  static constexpr int64_t kAny = -1;  // a size shape() does not fix

  explicit LaunchCheck(const char* op) : op_(op) {}

  // Defined and on a CUDA device: the device of the first tensor checked, which is where the op runs.
  const LaunchCheck& device(const torch::Tensor& t, const char* name) const {
    TORCH_CHECK(t.defined(), "cuda ", op_, ": tensor '", name, "' is undefined");
    TORCH_CHECK(t.is_cuda(), "cuda ", op_, ": tensor '", name, "' must be on a CUDA device, got ", t.device().str());
    if (!device_) device_ = t.device();
    TORCH_CHECK(t.device() == *device_, "cuda ", op_, ": tensor '", name, "' must be on ", device_->str(),
                " (where the op runs), got ", t.device().str());
    return *this;
  }
  const LaunchCheck& dtype(const torch::Tensor& t, const char* name, c10::ArrayRef<torch::ScalarType> allowed) const {
    for (torch::ScalarType a : allowed) {
      if (t.scalar_type() == a) return *this;
    }
    std::string names;
    for (torch::ScalarType a : allowed) names += std::string(names.empty() ? "" : " or ") + c10::toString(a);
    TORCH_CHECK(false, "cuda ", op_, ": tensor '", name, "' must be ", names, ", got ", c10::toString(t.scalar_type()));
    return *this;
  }
  // sizes == dims, where kAny matches any size.
  const LaunchCheck& shape(const torch::Tensor& t, const char* name, std::initializer_list<int64_t> dims) const {
    bool ok = t.dim() == static_cast<int64_t>(dims.size());
    int64_t d = 0;
    for (int64_t want : dims) {
      ok = ok && (want == kAny || t.size(d) == want);
      ++d;
    }
    if (!ok) {
      std::string expected;
      for (int64_t want : dims) expected += (expected.empty() ? "" : ", ") + (want == kAny ? std::string("*") : std::to_string(want));
      TORCH_CHECK(false, "cuda ", op_, ": tensor '", name, "' must have shape [", expected, "], got ", t.sizes());
    }
    return *this;
  }
  const LaunchCheck& contiguous(const torch::Tensor& t, const char* name) const {
    TORCH_CHECK(t.is_contiguous(), "cuda ", op_, ": tensor '", name, "' must be contiguous, got strides ", t.strides());
    return *this;
  }
  // A kernel's compile-time limit on a model size: an InputError naming the config key.
  const LaunchCheck& limit(const char* config_key, int64_t value, int64_t max) const {
    if (value > max) {
      throw InputError(fmt::format("cuda {}: config key '{}' = {} exceeds the fused kernel's limit of {}", op_,
                                   config_key, value, max));
    }
    return *this;
  }
  const LaunchCheck& positive(const char* what, int64_t value) const {
    TORCH_CHECK(value > 0, "cuda ", op_, ": ", what, " must be positive, got ", value);
    return *this;
  }

 private:
  const char* op_;
  mutable std::optional<torch::Device> device_;
};

// The kernels' limits (kernels/ssd_chunk_scan.cu, kernels/causal_conv1d.cu).
constexpr int64_t kMaxStateSize = 256;  // 8 state values per lane of a warp
constexpr int64_t kMaxHeadDim = 256;    // the step backward's shared-memory row
constexpr int64_t kMaxConvKernel = 8;   // the conv's register window

constexpr auto kAny = LaunchCheck::kAny;
constexpr std::array<torch::ScalarType, 2> kActDtypes = {torch::kFloat32, torch::kBFloat16};
// Inputs the ops convert to fp32 themselves (dt_bias, dt, A, D, the initial state).
constexpr std::array<torch::ScalarType, 4> kFloatDtypes = {torch::kFloat32, torch::kBFloat16, torch::kFloat16,
                                                           torch::kFloat64};

// How the chunked scan kernel multiplies a bf16 run's operands (kernels/fused_kernels.h):
// MAMBADIFF_SCAN_PRODUCTS=bf16 (the default: bf16 tensor cores, every computed operand rounded once,
// as mamba_ssm's and vLLM's kernels do) or split-tf32 (TF32 tensor cores, computed operands split
// hi + lo: ~21 bits a product, ~3x the MMAs). Read on every call (a test may switch it).
bool bf16_products() {
  const char* env = std::getenv("MAMBADIFF_SCAN_PRODUCTS");
  if (env == nullptr || std::string(env) == "bf16") return true;
  if (std::string(env) == "split-tf32") return false;
  throw InputError(fmt::format("MAMBADIFF_SCAN_PRODUCTS='{}': expected bf16 or split-tf32", env));
}

k::Act act_of(const torch::Tensor& t, const char* op) {
  if (t.scalar_type() == torch::kFloat32) return k::Act::kFloat32;
  if (t.scalar_type() == torch::kBFloat16) return k::Act::kBFloat16;
  TORCH_CHECK(false, "cuda ", op, ": float32 or bfloat16 activations only, got ", c10::toString(t.scalar_type()));
}

void* stream() { return at::cuda::getCurrentCUDAStream().stream(); }

void check(int rc, const char* op) {
  TORCH_CHECK(rc == 0, "cuda ", op, ": ", cudaGetErrorString(static_cast<cudaError_t>(rc)));
}

// A [B, T, ...] tensor whose rows (b, t) are `stride` elements apart, b-major, with contiguous
// trailing dims (a column slice of the in_proj or conv output); anything else is copied first.
struct Rows {
  torch::Tensor tensor;
  int64_t stride;
};

Rows rows_of(const torch::Tensor& t) {
  bool trailing_contiguous = true;
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 2; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) trailing_contiguous = false;
    expected *= t.size(d);
  }
  const int64_t stride = t.size(1) == 1 ? t.stride(0) : t.stride(1);
  const bool uniform = t.size(0) == 1 || t.stride(0) == t.size(1) * stride;
  if (trailing_contiguous && uniform && stride >= expected) return {t, stride};
  const torch::Tensor c = t.contiguous();
  return {c, expected};
}

// ---- RMSNorm ---------------------------------------------------------------------------------

struct RmsNormFn : torch::autograd::Function<RmsNormFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& weight,
                               double eps) {
    const torch::Tensor x = x_in.contiguous();
    TORCH_CHECK(x.scalar_type() == weight.scalar_type() || x.scalar_type() == torch::kFloat32,
                "cuda rms_norm: input ", c10::toString(x.scalar_type()), " with weight ",
                c10::toString(weight.scalar_type()), " (the input is the weight's dtype or float32)");
    const int64_t dim = x.size(-1), rows = x.numel() / dim;
    torch::Tensor out = torch::empty(x.sizes(), x.options().dtype(weight.scalar_type()));
    torch::Tensor rstd = torch::empty({rows}, x.options().dtype(torch::kFloat32));
    check(k::rms_norm_forward(act_of(x, "rms_norm"), act_of(weight, "rms_norm"), x.data_ptr(), weight.data_ptr(),
                              out.data_ptr(), rstd.data_ptr<float>(), rows, dim, static_cast<float>(eps), stream()),
          "rms_norm");
    ctx->save_for_backward({x, weight, rstd});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &weight = saved[1], &rstd = saved[2];
    const torch::Tensor g = grads[0].contiguous();
    LaunchCheck("rms_norm backward").device(g, "grad_out").dtype(g, "grad_out", {weight.scalar_type()});
    TORCH_CHECK(g.sizes() == x.sizes(), "cuda rms_norm backward: tensor 'grad_out' must have x's shape ", x.sizes(),
                ", got ", g.sizes());
    const int64_t dim = x.size(-1), rows = x.numel() / dim;
    torch::Tensor gx = torch::empty_like(x);
    check(k::rms_norm_backward(act_of(x, "rms_norm"), act_of(weight, "rms_norm"), x.data_ptr(), weight.data_ptr(),
                               rstd.data_ptr<float>(), g.data_ptr(), gx.data_ptr(), rows, dim, stream()),
          "rms_norm backward");
    return {gx, torch::Tensor(), torch::Tensor()};
  }
};

// ---- gated RMSNorm ---------------------------------------------------------------------------

struct GatedRmsNormFn : torch::autograd::Function<GatedRmsNormFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& y_in, const torch::Tensor& gate_in,
                               const torch::Tensor& weight, double eps, int64_t group_size) {
    const torch::Tensor y = y_in.to(torch::kFloat32).contiguous();
    const Rows gate = rows_of(gate_in);
    const int64_t I = y.size(-1), rows = y.numel() / I;
    TORCH_CHECK(group_size > 0 && I % group_size == 0, "cuda gated_rms_norm: group size ", group_size,
                " does not divide ", I);
    torch::Tensor out = torch::empty(y.sizes(), y.options().dtype(weight.scalar_type()));
    torch::Tensor rstd = torch::empty({rows, I / group_size}, y.options());
    check(k::gated_rms_norm_forward(act_of(weight, "gated_rms_norm"), y.data_ptr<float>(), gate.tensor.data_ptr(),
                                    gate.stride, weight.data_ptr(), out.data_ptr(), rstd.data_ptr<float>(), rows, I,
                                    group_size, static_cast<float>(eps), stream()),
          "gated_rms_norm");
    ctx->save_for_backward({y, gate.tensor, weight, rstd});
    ctx->saved_data["gate_stride"] = gate.stride;
    ctx->saved_data["group_size"] = group_size;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &y = saved[0], &gate = saved[1], &weight = saved[2], &rstd = saved[3];
    const torch::Tensor g = grads[0].contiguous();
    LaunchCheck("gated_rms_norm backward").device(g, "grad_out").dtype(g, "grad_out", {weight.scalar_type()});
    TORCH_CHECK(g.sizes() == y.sizes(), "cuda gated_rms_norm backward: tensor 'grad_out' must have y's shape ",
                y.sizes(), ", got ", g.sizes());
    const int64_t I = y.size(-1), rows = y.numel() / I;
    torch::Tensor gy = torch::empty_like(y);
    torch::Tensor ggate = torch::empty(y.sizes(), y.options().dtype(weight.scalar_type()));
    check(k::gated_rms_norm_backward(act_of(weight, "gated_rms_norm"), y.data_ptr<float>(), gate.data_ptr(),
                                     ctx->saved_data["gate_stride"].toInt(), weight.data_ptr(), rstd.data_ptr<float>(),
                                     g.data_ptr(), gy.data_ptr<float>(), ggate.data_ptr(), rows, I,
                                     ctx->saved_data["group_size"].toInt(), stream()),
          "gated_rms_norm backward");
    return {gy, ggate, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// ---- causal conv1d ---------------------------------------------------------------------------

// Where a forward writes cache state (the new conv window, the final SSM state): not an autograd
// input, so it may be the cache's own tensor.
struct Destination {
  torch::Tensor tensor;
};

struct CausalConv1dFn : torch::autograd::Function<CausalConv1dFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& inputs, const torch::Tensor& window_in,
                               const torch::Tensor& weight, const torch::Tensor& bias, Destination new_window) {
    TORCH_CHECK(!window_in.requires_grad(), "cuda causal_conv1d: gradients to the conv window are not implemented");
    const Rows x = rows_of(inputs);
    const int64_t Bsz = inputs.size(0), T = inputs.size(1), C = inputs.size(2), K = weight.size(1);
    const torch::Tensor window = window_in.to(inputs.scalar_type()).contiguous();
    TORCH_CHECK(new_window.tensor.is_contiguous() && new_window.tensor.scalar_type() == inputs.scalar_type() &&
                    new_window.tensor.sizes() == window.sizes(),
                "cuda causal_conv1d: the new window must be a contiguous [B, C, K] tensor of the inputs' dtype");
    torch::Tensor out = torch::empty({Bsz, T, C}, inputs.options());
    const bool keep_pre = inputs.requires_grad();
    torch::Tensor pre = torch::empty({keep_pre ? Bsz * T * C : 0}, inputs.options().dtype(torch::kFloat32));
    check(k::causal_conv1d_forward(act_of(inputs, "causal_conv1d"), x.tensor.data_ptr(), x.stride, window.data_ptr(),
                                   weight.data_ptr(), bias.numel() > 0 ? bias.data_ptr() : nullptr, out.data_ptr(),
                                   new_window.tensor.data_ptr(), keep_pre ? pre.data_ptr<float>() : nullptr, Bsz, T, C,
                                   K, stream()),
          "causal_conv1d");
    ctx->save_for_backward({pre, weight});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &pre = saved[0], &weight = saved[1];
    TORCH_CHECK(pre.numel() > 0, "cuda causal_conv1d backward: the forward kept no pre-activation");
    const torch::Tensor g = grads[0].contiguous().to(weight.scalar_type());
    LaunchCheck("causal_conv1d backward").device(g, "grad_out").shape(g, "grad_out", {LaunchCheck::kAny, LaunchCheck::kAny, weight.size(0)});
    TORCH_CHECK(g.numel() == pre.numel(), "cuda causal_conv1d backward: tensor 'grad_out' has ", g.numel(),
                " elements, the forward kept ", pre.numel());
    const int64_t Bsz = g.size(0), T = g.size(1), C = g.size(2), K = weight.size(1);
    torch::Tensor gx = torch::empty({Bsz, T, C}, g.options());
    check(k::causal_conv1d_backward(act_of(g, "causal_conv1d"), g.data_ptr(), pre.data_ptr<float>(), weight.data_ptr(),
                                    gx.data_ptr(), Bsz, T, C, K, stream()),
          "causal_conv1d backward");
    return {gx, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// ---- dt discretization -----------------------------------------------------------------------

struct DiscretizeDtFn : torch::autograd::Function<DiscretizeDtFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& dt_raw, const torch::Tensor& dt_bias_in,
                               double lo, double hi) {
    const torch::Tensor dt_bias = dt_bias_in.to(torch::kFloat32).contiguous();
    const Rows raw = rows_of(dt_raw);
    const int64_t Bsz = dt_raw.size(0), T = dt_raw.size(1), H = dt_raw.size(2);
    torch::Tensor dt = torch::empty({Bsz, T, H}, dt_raw.options().dtype(torch::kFloat32));
    check(k::discretize_dt_forward(act_of(dt_raw, "discretize_dt"), raw.tensor.data_ptr(), raw.stride,
                                   dt_bias.data_ptr<float>(), dt.data_ptr<float>(), Bsz * T, H, static_cast<float>(lo),
                                   static_cast<float>(hi), stream()),
          "discretize_dt");
    ctx->save_for_backward({raw.tensor, dt_bias});
    ctx->saved_data["stride"] = raw.stride;
    ctx->saved_data["lo"] = lo;
    ctx->saved_data["hi"] = hi;
    return dt;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &raw = saved[0], &bias = saved[1];
    const torch::Tensor g = grads[0].to(torch::kFloat32).contiguous();
    LaunchCheck("discretize_dt backward").device(g, "grad_dt").shape(g, "grad_dt", {LaunchCheck::kAny, LaunchCheck::kAny, bias.size(0)});
    const int64_t Bsz = g.size(0), T = g.size(1), H = g.size(2);
    torch::Tensor graw = torch::empty({Bsz, T, H}, raw.options());
    check(k::discretize_dt_backward(act_of(raw, "discretize_dt"), raw.data_ptr(), ctx->saved_data["stride"].toInt(),
                                    bias.data_ptr<float>(), g.data_ptr<float>(), graw.data_ptr(), Bsz * T, H,
                                    static_cast<float>(ctx->saved_data["lo"].toDouble()),
                                    static_cast<float>(ctx->saved_data["hi"].toDouble()), stream()),
          "discretize_dt backward");
    return {graw, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// ---- the selective scan ----------------------------------------------------------------------

// x, B and C as one row layout (they are column slices of the same conv output); otherwise one
// contiguous copy of the three side by side.
struct ScanInputs {
  torch::Tensor x, Bm, Cm;
  int64_t stride;
};

ScanInputs scan_inputs(const torch::Tensor& x, const torch::Tensor& Bm, const torch::Tensor& Cm) {
  const Rows rx = rows_of(x), rb = rows_of(Bm), rc = rows_of(Cm);
  if (rx.tensor.is_same(x) && rb.tensor.is_same(Bm) && rc.tensor.is_same(Cm) && rx.stride == rb.stride &&
      rb.stride == rc.stride) {
    return {x, Bm, Cm, rx.stride};
  }
  const int64_t Bsz = x.size(0), T = x.size(1);
  const torch::Tensor packed = torch::cat({x.reshape({Bsz, T, -1}), Bm.reshape({Bsz, T, -1}).to(x.scalar_type()),
                                           Cm.reshape({Bsz, T, -1}).to(x.scalar_type())}, 2);
  const int64_t nx = x.numel() / (Bsz * T), nb = Bm.numel() / (Bsz * T);
  return {packed.narrow(2, 0, nx).view(x.sizes()), packed.narrow(2, nx, nb).view(Bm.sizes()),
          packed.narrow(2, nx + nb, nb).view(Cm.sizes()), packed.size(2)};
}

k::ScanShape shape_of(const torch::Tensor& x, const torch::Tensor& Bm) {
  TORCH_CHECK(x.dim() == 4 && Bm.dim() == 4, "cuda ssd_chunk_scan: x must be [B, T, H, P] and B/C [B, T, G, N]");
  return k::ScanShape{x.size(0), x.size(1), x.size(2), x.size(3), Bm.size(2), Bm.size(3)};
}

struct SsdChunkScanFn : torch::autograd::Function<SsdChunkScanFn> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& dt_in,
                               const torch::Tensor& A_in, const torch::Tensor& Bm_in, const torch::Tensor& Cm_in,
                               const torch::Tensor& D_in, const torch::Tensor& initial_in, Destination dest,
                               int64_t chunk_size) {
    const torch::Tensor D = D_in.to(torch::kFloat32).contiguous();
    const ScanInputs in = scan_inputs(x_in, Bm_in, Cm_in);
    const k::ScanShape s = shape_of(x_in, Bm_in);
    const torch::Tensor dt = dt_in.to(torch::kFloat32).contiguous();
    const torch::Tensor A = A_in.to(torch::kFloat32).contiguous();
    // An empty `initial` means a zero initial state (autograd inputs cannot be undefined tensors).
    const bool has_initial = initial_in.numel() > 0;
    const torch::Tensor initial = has_initial ? initial_in.to(torch::kFloat32).contiguous() : initial_in;
    const auto f32 = x_in.options().dtype(torch::kFloat32);
    torch::Tensor y = torch::empty({s.batch, s.tokens, s.heads, s.head_dim}, f32);
    // With a destination (the cache's state, when nothing needs the gradient) the final state goes
    // there and the second output is an empty placeholder.
    const bool to_dest = dest.tensor.defined();
    if (to_dest) {
      TORCH_CHECK(dest.tensor.is_contiguous() && dest.tensor.scalar_type() == torch::kFloat32 &&
                      dest.tensor.sizes() == torch::IntArrayRef({s.batch, s.heads, s.head_dim, s.state_size}),
                  "cuda ssd_chunk_scan: the state destination must be a contiguous fp32 [B, H, P, N] tensor");
    }
    torch::Tensor final_state = to_dest ? torch::empty({0}, f32)
                                        : torch::empty({s.batch, s.heads, s.head_dim, s.state_size}, f32);
    float* final_ptr = to_dest ? dest.tensor.data_ptr<float>() : final_state.data_ptr<float>();
    if (s.tokens > 1) {
      // Prefill and continue: the chunked SSD kernel (tensor cores), with its workspace from the
      // caching allocator (graph-capturable: no host synchronization).
      k::ChunkedScanParams p;
      p.act = act_of(x_in, "ssd_chunk_scan");
      p.shape = s;
      p.chunk_size = chunk_size;
      p.x = in.x.data_ptr();
      p.Bm = in.Bm.data_ptr();
      p.Cm = in.Cm.data_ptr();
      p.xbc_token_stride = in.stride;
      p.dt = dt.data_ptr<float>();
      p.dt_token_stride = s.heads;
      p.A = A.data_ptr<float>();
      p.D = D.data_ptr<float>();
      p.initial = has_initial ? initial.data_ptr<float>() : nullptr;
      p.y = y.data_ptr<float>();
      p.final_state = final_ptr;
      p.bf16_products = bf16_products();
      torch::Tensor workspace = torch::empty(
          {static_cast<int64_t>(k::ssd_chunked_scan_workspace_bytes(s, chunk_size))}, x_in.options().dtype(torch::kUInt8));
      check(k::ssd_chunked_scan_forward(p, workspace.data_ptr(), stream()), "ssd_chunk_scan (chunked)");
    } else {
      // The decode step (and T = 0): the sequential kernel, one token in registers.
      check(k::ssd_chunk_scan_forward(act_of(x_in, "ssd_chunk_scan"), s, in.x.data_ptr(), in.Bm.data_ptr(),
                                      in.Cm.data_ptr(), in.stride, dt.data_ptr<float>(), A.data_ptr<float>(),
                                      D.data_ptr<float>(), has_initial ? initial.data_ptr<float>() : nullptr,
                                      y.data_ptr<float>(), final_ptr, stream()),
            "ssd_chunk_scan");
    }
    ctx->save_for_backward({in.x, in.Bm, in.Cm, dt, A, D, initial});
    ctx->saved_data["stride"] = in.stride;
    ctx->saved_data["shape"] = std::vector<int64_t>{s.batch, s.tokens, s.heads, s.head_dim, s.groups, s.state_size};
    return {y, final_state};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &Bm = saved[1], &Cm = saved[2], &dt = saved[3], &A = saved[4], &D = saved[5],
                        &initial = saved[6];
    const auto dims = ctx->saved_data["shape"].toIntVector();
    const k::ScanShape s{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5]};
    TORCH_CHECK(s.tokens == 1, "cuda ssd_chunk_scan: the backward of a ", s.tokens,
                "-token scan is not implemented (the optimizer differentiates one-token decode steps)");
    const auto f32 = dt.options();
    const bool has_initial = initial.numel() > 0;
    const torch::Tensor state = has_initial ? initial : torch::zeros({s.batch, s.heads, s.head_dim, s.state_size}, f32);
    const torch::Tensor gy = grads[0].defined() ? grads[0].to(torch::kFloat32).contiguous()
                                                : torch::zeros({s.batch, 1, s.heads, s.head_dim}, f32);
    const torch::Tensor gs_out = grads[1].defined() ? grads[1].to(torch::kFloat32).contiguous() : torch::Tensor();
    const LaunchCheck c("ssd_chunk_scan backward");
    c.device(gy, "grad_y").shape(gy, "grad_y", {s.batch, 1, s.heads, s.head_dim}).limit("head_dim", s.head_dim, kMaxHeadDim);
    if (gs_out.defined()) c.device(gs_out, "grad_final_state").shape(gs_out, "grad_final_state", {s.batch, s.heads, s.head_dim, s.state_size});
    torch::Tensor gx = torch::empty({s.batch, 1, s.heads, s.head_dim}, x.options());
    torch::Tensor gdt = torch::empty({s.batch, 1, s.heads}, f32);
    torch::Tensor gB_head = torch::empty({s.batch, s.heads, s.state_size}, f32);
    torch::Tensor gC_head = torch::empty({s.batch, s.heads, s.state_size}, f32);
    torch::Tensor gs = torch::empty({s.batch, s.heads, s.head_dim, s.state_size}, f32);
    check(k::selective_state_update_backward(act_of(x, "ssd_chunk_scan"), s, x.data_ptr(), Bm.data_ptr(), Cm.data_ptr(),
                               ctx->saved_data["stride"].toInt(), dt.data_ptr<float>(), A.data_ptr<float>(),
                               D.data_ptr<float>(), state.data_ptr<float>(), gy.data_ptr<float>(),
                               gs_out.defined() ? gs_out.data_ptr<float>() : nullptr, gx.data_ptr(),
                               gdt.data_ptr<float>(), gB_head.data_ptr<float>(), gC_head.data_ptr<float>(),
                               gs.data_ptr<float>(), stream()),
          "ssd_chunk_scan backward");
    // Heads of a group share its B and C: their gradients add (in a fixed order).
    const auto per_group = [&](const torch::Tensor& g) {
      return g.view({s.batch, s.groups, s.heads / s.groups, s.state_size}).sum(2).unsqueeze(1).to(x.scalar_type());
    };
    return {gx, gdt, torch::Tensor(), per_group(gB_head), per_group(gC_head), torch::Tensor(),
            has_initial ? gs : torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// ---- the fused decode step -------------------------------------------------------------------

// Everything of the decode step that is not an autograd input: the cache's window (written in
// place), the weights, and whether the state is updated in place (nothing records a gradient).
struct DecodeStepArgs {
  torch::Tensor window;
  DecodeStepWeights weights;
  bool in_place = false;
};

struct DecodeStepFn : torch::autograd::Function<DecodeStepFn> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& xBC_raw, const torch::Tensor& dt_raw,
                               const torch::Tensor& state, DecodeStepArgs args) {
    const DecodeStepWeights& w = args.weights;
    const Rows xbc = rows_of(xBC_raw), dt = rows_of(dt_raw);
    const int64_t Bsz = xBC_raw.size(0), C = xBC_raw.size(2), H = dt_raw.size(2);
    const int64_t P = state.size(2), N = state.size(3), G = w.groups;
    const auto f32 = state.options();
    const torch::Tensor dt_bias = w.dt_bias.to(torch::kFloat32).contiguous(), A = w.A.to(torch::kFloat32).contiguous(),
                        D = w.D.to(torch::kFloat32).contiguous();
    torch::Tensor y = torch::empty({Bsz, H, P}, f32);
    torch::Tensor new_state = args.in_place ? torch::empty({0}, f32) : torch::empty(state.sizes(), f32);
    torch::Tensor saved_state = args.in_place ? torch::empty({0}, f32) : torch::empty(state.sizes(), f32);
    torch::Tensor saved_pre = args.in_place ? torch::empty({0}, f32) : torch::empty({Bsz, C}, f32);
    k::DecodeStepParams p;
    p.act = act_of(xBC_raw, "decode_step");
    p.shape = k::ScanShape{Bsz, 1, H, P, G, N};
    p.conv_kernel = w.conv_weight.size(1);
    p.xbc_raw = xbc.tensor.data_ptr();
    p.xbc_stride = xbc.stride;
    p.dt_raw = dt.tensor.data_ptr();
    p.dt_stride = dt.stride;
    p.window = args.window.data_ptr();
    p.conv_weight = w.conv_weight.data_ptr();
    p.conv_bias = w.conv_bias.defined() && w.conv_bias.numel() > 0 ? w.conv_bias.data_ptr() : nullptr;
    p.dt_bias = dt_bias.data_ptr<float>();
    p.dt_min = static_cast<float>(w.dt_min);
    p.dt_max = static_cast<float>(w.dt_max);
    p.A = A.data_ptr<float>();
    p.D = D.data_ptr<float>();
    p.state_in = state.data_ptr<float>();
    p.state_out = args.in_place ? state.data_ptr<float>() : new_state.data_ptr<float>();
    p.y = y.data_ptr<float>();
    p.saved_state = args.in_place ? nullptr : saved_state.data_ptr<float>();
    p.saved_pre = args.in_place ? nullptr : saved_pre.data_ptr<float>();
    check(k::decode_step_forward(p, stream()), "decode_step");
    ctx->save_for_backward({saved_pre, saved_state, dt.tensor, w.conv_weight, dt_bias, A, D});
    ctx->saved_data["dt_stride"] = dt.stride;
    ctx->saved_data["dt_min"] = w.dt_min;
    ctx->saved_data["dt_max"] = w.dt_max;
    ctx->saved_data["groups"] = G;
    return {y, new_state};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &saved_pre = saved[0], &saved_state = saved[1], &dt_raw = saved[2], &conv_weight = saved[3],
                        &dt_bias = saved[4], &A = saved[5], &D = saved[6];
    TORCH_CHECK(saved_pre.numel() > 0, "cuda decode_step backward: the forward ran in place and kept nothing");
    const int64_t Bsz = saved_state.size(0), H = saved_state.size(1), P = saved_state.size(2), N = saved_state.size(3);
    const int64_t C = saved_pre.size(1);
    const auto f32 = saved_state.options();
    const torch::Tensor gy = grads[0].defined() ? grads[0].to(torch::kFloat32).contiguous() : torch::zeros({Bsz, H, P}, f32);
    const torch::Tensor gs_out = grads[1].defined() ? grads[1].to(torch::kFloat32).contiguous() : torch::Tensor();
    const LaunchCheck c("decode_step backward");
    c.device(gy, "grad_y").shape(gy, "grad_y", {Bsz, H, P});
    if (gs_out.defined()) c.device(gs_out, "grad_new_state").shape(gs_out, "grad_new_state", {Bsz, H, P, N});
    const auto act = conv_weight.options();
    torch::Tensor gxbc = torch::empty({Bsz, 1, C}, act), gdt = torch::empty({Bsz, 1, H}, act);
    torch::Tensor gs = torch::empty({Bsz, H, P, N}, f32), workspace = torch::empty({Bsz, H, 2 * N}, f32);
    k::DecodeStepBackwardParams p;
    p.act = act_of(conv_weight, "decode_step");
    p.shape = k::ScanShape{Bsz, 1, H, P, ctx->saved_data["groups"].toInt(), N};
    p.conv_kernel = conv_weight.size(1);
    p.saved_pre = saved_pre.data_ptr<float>();
    p.saved_state = saved_state.data_ptr<float>();
    p.dt_raw = dt_raw.data_ptr();
    p.dt_stride = ctx->saved_data["dt_stride"].toInt();
    p.conv_weight = conv_weight.data_ptr();
    p.dt_bias = dt_bias.data_ptr<float>();
    p.dt_min = static_cast<float>(ctx->saved_data["dt_min"].toDouble());
    p.dt_max = static_cast<float>(ctx->saved_data["dt_max"].toDouble());
    p.A = A.data_ptr<float>();
    p.D = D.data_ptr<float>();
    p.grad_y = gy.data_ptr<float>();
    p.grad_state_out = gs_out.defined() ? gs_out.data_ptr<float>() : nullptr;
    p.grad_xbc_raw = gxbc.data_ptr();
    p.grad_dt_raw = gdt.data_ptr();
    p.grad_state = gs.data_ptr<float>();
    p.workspace = workspace.data_ptr<float>();
    check(k::decode_step_backward(p, stream()), "decode_step backward");
    return {gxbc, gdt, gs, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  const LaunchCheck c("rms_norm");
  c.device(x, "x").dtype(x, "x", kActDtypes).positive("x's last dimension", x.dim() > 0 ? x.size(-1) : 0);
  c.device(weight, "weight").dtype(weight, "weight", kActDtypes).shape(weight, "weight", {x.size(-1)});
  const c10::cuda::CUDAGuard on_device(x.device());
  return RmsNormFn::apply(x, weight, eps);
}

torch::Tensor gated_rms_norm(const torch::Tensor& y, const torch::Tensor& gate, const torch::Tensor& weight,
                             double eps, int64_t group_size) {
  const LaunchCheck c("gated_rms_norm");
  c.device(y, "y").shape(y, "y", {kAny, kAny, kAny}).dtype(y, "y", kActDtypes).positive("d_inner", y.size(2));
  // The kernel reads the gate in the weight's dtype.
  c.device(weight, "weight").dtype(weight, "weight", kActDtypes).shape(weight, "weight", {y.size(2)});
  c.device(gate, "gate").dtype(gate, "gate", {weight.scalar_type()}).shape(gate, "gate", {y.size(0), y.size(1), y.size(2)});
  c.positive("group size", group_size);
  TORCH_CHECK(y.size(2) % group_size == 0, "cuda gated_rms_norm: group size ", group_size, " does not divide ", y.size(2));
  const c10::cuda::CUDAGuard on_device(y.device());
  return GatedRmsNormFn::apply(y, gate, weight, eps, group_size);
}

std::pair<torch::Tensor, torch::Tensor> causal_conv1d(const torch::Tensor& inputs, const torch::Tensor& window,
                                                      const torch::Tensor& weight, const torch::Tensor& bias,
                                                      torch::Tensor new_window) {
  const LaunchCheck c("causal_conv1d");
  c.shape(inputs, "inputs", {kAny, kAny, kAny});
  c.shape(weight, "weight", {inputs.size(2), kAny});
  const int64_t Bsz = inputs.size(0), C = inputs.size(2), K = weight.size(1);
  c.positive("conv_kernel", K).limit("conv_kernel", K, kMaxConvKernel);
  // The kernel reads the weight and bias in the inputs' dtype.
  c.device(inputs, "inputs").dtype(inputs, "inputs", kActDtypes);
  c.device(weight, "weight").dtype(weight, "weight", {inputs.scalar_type()});
  c.device(window, "window").shape(window, "window", {Bsz, C, K});
  if (bias.defined() && bias.numel() > 0) {
    c.device(bias, "bias").dtype(bias, "bias", {inputs.scalar_type()}).shape(bias, "bias", {C});
  }
  if (new_window.defined()) {
    c.device(new_window, "new_window").dtype(new_window, "new_window", {inputs.scalar_type()});
    c.shape(new_window, "new_window", {Bsz, C, K}).contiguous(new_window, "new_window");
  }
  const c10::cuda::CUDAGuard on_device(inputs.device());
  if (!new_window.defined()) new_window = torch::empty(window.sizes(), inputs.options());
  // Absent bias: an empty tensor (autograd inputs cannot be undefined tensors).
  torch::Tensor out = CausalConv1dFn::apply(inputs, window, weight, bias.defined() ? bias : torch::empty({0}, weight.options()),
                                      Destination{new_window});
  return {out, new_window};
}

torch::Tensor discretize_dt(const torch::Tensor& dt_raw, const torch::Tensor& dt_bias, double lo, double hi) {
  const LaunchCheck c("discretize_dt");
  c.device(dt_raw, "dt_raw").shape(dt_raw, "dt_raw", {kAny, kAny, kAny}).dtype(dt_raw, "dt_raw", kActDtypes);
  c.device(dt_bias, "dt_bias").shape(dt_bias, "dt_bias", {dt_raw.size(2)});
  c.dtype(dt_bias, "dt_bias", kFloatDtypes);
  const c10::cuda::CUDAGuard on_device(dt_raw.device());
  return DiscretizeDtFn::apply(dt_raw, dt_bias, lo, hi);
}

std::pair<torch::Tensor, torch::Tensor> ssd_chunk_scan(const torch::Tensor& x, const torch::Tensor& dt,
                                                 const torch::Tensor& A, const torch::Tensor& Bm,
                                                 const torch::Tensor& Cm, const torch::Tensor& D,
                                                 const torch::Tensor& initial, const torch::Tensor& final_state_out,
                                                 int64_t chunk_size) {
  const LaunchCheck c("ssd_chunk_scan");
  c.positive("chunk_size", chunk_size);
  // Shapes and the kernel's limits first (they need no device), then devices and dtypes.
  c.shape(x, "x", {kAny, kAny, kAny, kAny});
  const int64_t Bsz = x.size(0), T = x.size(1), H = x.size(2), P = x.size(3);
  c.shape(Bm, "B", {Bsz, T, kAny, kAny});
  const int64_t G = Bm.size(2), N = Bm.size(3);
  c.shape(Cm, "C", {Bsz, T, G, N}).positive("n_groups", G).positive("state_size", N);
  TORCH_CHECK(H % G == 0, "cuda ssd_chunk_scan: heads ", H, " are not a multiple of groups ", G);
  c.limit("state_size", N, kMaxStateSize).limit("head_dim", P, kMaxHeadDim);
  c.device(x, "x").dtype(x, "x", kActDtypes);
  c.device(Bm, "B").dtype(Bm, "B", {x.scalar_type()});
  c.device(Cm, "C").dtype(Cm, "C", {x.scalar_type()});
  c.device(dt, "dt").shape(dt, "dt", {Bsz, T, H}).dtype(dt, "dt", kFloatDtypes);
  c.device(A, "A").shape(A, "A", {H}).dtype(A, "A", kFloatDtypes);
  c.device(D, "D").shape(D, "D", {H}).dtype(D, "D", kFloatDtypes);
  if (initial.defined() && initial.numel() > 0) {
    c.device(initial, "initial").shape(initial, "initial", {Bsz, H, P, N});
    c.dtype(initial, "initial", kFloatDtypes);
  }
  if (final_state_out.defined()) {
    c.device(final_state_out, "final_state_out").shape(final_state_out, "final_state_out", {Bsz, H, P, N});
    c.dtype(final_state_out, "final_state_out", {torch::kFloat32}).contiguous(final_state_out, "final_state_out");
  }
  const c10::cuda::CUDAGuard on_device(x.device());
  auto out = SsdChunkScanFn::apply(x, dt, A, Bm, Cm, D, initial.defined() ? initial : torch::empty({0}, dt.options()),
                           Destination{final_state_out}, chunk_size);
  return {out[0], final_state_out.defined() ? final_state_out : out[1]};
}

bool decode_step_supported(const torch::Tensor& xBC_raw, const torch::Tensor& window, const torch::Tensor& state,
                           const DecodeStepWeights& w) {
  if (xBC_raw.dim() != 3 || xBC_raw.size(1) != 1 || state.dim() != 4 || w.conv_weight.dim() != 2) return false;
  const auto act = xBC_raw.scalar_type();
  if (act != torch::kFloat32 && act != torch::kBFloat16) return false;
  if (!window.is_contiguous() || window.scalar_type() != act || w.conv_weight.scalar_type() != act) return false;
  if (w.conv_bias.defined() && w.conv_bias.numel() > 0 && w.conv_bias.scalar_type() != act) return false;
  if (!state.is_contiguous() || state.scalar_type() != torch::kFloat32) return false;
  if (reinterpret_cast<uintptr_t>(state.data_ptr()) % 16 != 0) return false;
  const k::ScanShape s{xBC_raw.size(0), 1, state.size(1), state.size(2), w.groups, state.size(3)};
  return k::decode_step_supported(s, w.conv_weight.size(1));
}

std::pair<torch::Tensor, torch::Tensor> decode_step(const torch::Tensor& xBC_raw, const torch::Tensor& dt_raw,
                                                    const torch::Tensor& window, const torch::Tensor& state,
                                                    const DecodeStepWeights& w) {
  const LaunchCheck c("decode_step");
  c.shape(state, "state", {kAny, kAny, kAny, kAny});
  const int64_t Bsz = state.size(0), H = state.size(1), P = state.size(2), N = state.size(3), G = w.groups;
  c.positive("n_groups", G).positive("state_size", N);
  TORCH_CHECK(H % G == 0, "cuda decode_step: heads ", H, " are not a multiple of groups ", G);
  const int64_t C = H * P + 2 * G * N;
  c.shape(xBC_raw, "xBC_raw", {Bsz, 1, C}).shape(dt_raw, "dt_raw", {Bsz, 1, H});
  c.shape(w.conv_weight, "conv_weight", {C, kAny});
  const int64_t K = w.conv_weight.size(1);
  c.positive("conv_kernel", K).limit("conv_kernel", K, kMaxConvKernel).limit("state_size", N, kMaxStateSize);
  c.limit("head_dim", P, kMaxHeadDim);
  c.device(xBC_raw, "xBC_raw").dtype(xBC_raw, "xBC_raw", kActDtypes);
  c.device(dt_raw, "dt_raw").dtype(dt_raw, "dt_raw", {xBC_raw.scalar_type()});
  c.device(window, "window").dtype(window, "window", {xBC_raw.scalar_type()}).shape(window, "window", {Bsz, C, K});
  c.contiguous(window, "window");
  c.device(state, "state").dtype(state, "state", {torch::kFloat32}).contiguous(state, "state");
  c.device(w.conv_weight, "conv_weight").dtype(w.conv_weight, "conv_weight", {xBC_raw.scalar_type()});
  if (w.conv_bias.defined() && w.conv_bias.numel() > 0) {
    c.device(w.conv_bias, "conv_bias").dtype(w.conv_bias, "conv_bias", {xBC_raw.scalar_type()}).shape(w.conv_bias, "conv_bias", {C});
  }
  c.device(w.dt_bias, "dt_bias").shape(w.dt_bias, "dt_bias", {H}).dtype(w.dt_bias, "dt_bias", kFloatDtypes);
  c.device(w.A, "A").shape(w.A, "A", {H}).dtype(w.A, "A", kFloatDtypes);
  c.device(w.D, "D").shape(w.D, "D", {H}).dtype(w.D, "D", kFloatDtypes);
  TORCH_CHECK(decode_step_supported(xBC_raw, window, state, w),
              "cuda decode_step: these tensors are past the fused kernel's limits (decode_step_supported)");
  const c10::cuda::CUDAGuard on_device(state.device());
  const bool tracked = torch::GradMode::is_enabled() &&
                       (xBC_raw.requires_grad() || dt_raw.requires_grad() || state.requires_grad());
  auto out = DecodeStepFn::apply(xBC_raw, dt_raw, state, DecodeStepArgs{window, w, !tracked});
  return {out[0], tracked ? out[1] : state};
}

bool delta_statistics(const std::vector<torch::Tensor>& rows, const std::vector<int64_t>& target,
                      const std::vector<torch::Tensor>& deltas, const torch::Tensor& loss, torch::Tensor& stats) {
  using Params = k::DeltaStatisticsParams;
  if (rows.empty() || rows.size() != target.size() || rows.size() > static_cast<size_t>(Params::kMaxRows) ||
      deltas.size() > static_cast<size_t>(Params::kMaxDeltas)) {
    return false;
  }
  const auto on_device_fp32 = [&](const torch::Tensor& t) {
    return t.defined() && t.is_cuda() && t.device() == stats.device() && t.scalar_type() == torch::kFloat32 &&
           t.is_contiguous();
  };
  if (!stats.is_cuda() || stats.scalar_type() != torch::kFloat64 || stats.numel() != 4 || !stats.is_contiguous() ||
      !on_device_fp32(loss) || loss.numel() != 1) {
    return false;
  }
  Params p;
  p.rows = static_cast<int>(rows.size());
  p.vocab = rows[0].numel();
  for (size_t r = 0; r < rows.size(); ++r) {
    if (!on_device_fp32(rows[r]) || rows[r].numel() != p.vocab || target[r] < 0 || target[r] >= p.vocab) return false;
    p.logits[r] = rows[r].data_ptr<float>();
    p.target[r] = target[r];
  }
  p.deltas = static_cast<int>(deltas.size());
  for (size_t d = 0; d < deltas.size(); ++d) {
    if (!on_device_fp32(deltas[d])) return false;
    p.delta[d] = deltas[d].data_ptr<float>();
    p.delta_numel[d] = deltas[d].numel();
  }
  const c10::cuda::CUDAGuard on_device(stats.device());
  torch::Tensor partials = torch::empty({2 * p.rows + p.deltas}, stats.options());
  p.loss = loss.data_ptr<float>();
  p.partials = partials.data_ptr<double>();
  p.stats = stats.data_ptr<double>();
  check(k::delta_statistics(p, stream()), "delta_statistics");
  return true;
}

namespace {

// One token per sequence, no gradient recorded, on a CUDA device, a weight the GEMV kernels take.
bool decode_gemv_operands(const torch::Tensor& input, const torch::Tensor& weight, int64_t cols) {
  if (torch::GradMode::is_enabled() && (input.requires_grad() || weight.requires_grad())) return false;
  if (input.dim() != 3 || input.size(1) != 1 || !input.is_cuda() || !weight.is_cuda() || weight.dim() != 2) return false;
  const auto act = weight.scalar_type();
  if ((act != torch::kFloat32 && act != torch::kBFloat16) || !weight.is_contiguous()) return false;
  const int64_t vector = act == torch::kFloat32 ? 4 : 8;
  return weight.size(1) == cols && cols <= k::kDecodeGemvMaxCols && cols % vector == 0 &&
         reinterpret_cast<uintptr_t>(weight.data_ptr()) % 16 == 0;
}

}  // namespace

bool norm_in_proj_supported(const torch::Tensor& x, const torch::Tensor& norm_weight, const torch::Tensor& weight,
                            const torch::Tensor& bias) {
  if (!decode_gemv_operands(x, weight, x.dim() == 3 ? x.size(2) : -1) || !x.is_contiguous()) return false;
  if (x.scalar_type() != torch::kFloat32 && x.scalar_type() != weight.scalar_type()) return false;
  if (norm_weight.scalar_type() != weight.scalar_type() || norm_weight.numel() != x.size(2)) return false;
  return !bias.defined() || (bias.scalar_type() == weight.scalar_type() && bias.numel() == weight.size(0));
}

torch::Tensor norm_in_proj(const torch::Tensor& x, const torch::Tensor& norm_weight, double eps,
                           const torch::Tensor& weight, const torch::Tensor& bias) {
  TORCH_CHECK(norm_in_proj_supported(x, norm_weight, weight, bias),
              "cuda norm_in_proj: these tensors are past the kernel's limits (norm_in_proj_supported)");
  LaunchCheck("norm_in_proj").device(x, "x").device(norm_weight, "norm_weight").device(weight, "weight");
  const c10::cuda::CUDAGuard on_device(x.device());
  const torch::Tensor nw = norm_weight.contiguous();
  const torch::Tensor b = bias.defined() ? bias.contiguous() : bias;
  torch::Tensor out = torch::empty({x.size(0), 1, weight.size(0)}, weight.options());
  k::NormInProjParams p;
  p.x_act = act_of(x, "norm_in_proj");
  p.act = act_of(weight, "norm_in_proj");
  p.batch = x.size(0);
  p.dim = x.size(2);
  p.out_features = weight.size(0);
  p.x = x.data_ptr();
  p.norm_weight = nw.data_ptr();
  p.eps = static_cast<float>(eps);
  p.weight = weight.data_ptr();
  p.bias = b.defined() ? b.data_ptr() : nullptr;
  p.out = out.data_ptr();
  check(k::norm_in_proj_forward(p, stream()), "norm_in_proj");
  return out;
}

bool gated_norm_out_proj_supported(const torch::Tensor& y, const torch::Tensor& gate, const torch::Tensor& norm_weight,
                                   int64_t group_size, const torch::Tensor& weight, const torch::Tensor& residual) {
  if (!decode_gemv_operands(y, weight, y.dim() == 3 ? y.size(2) : -1) || !y.is_contiguous()) return false;
  if (torch::GradMode::is_enabled() && (gate.requires_grad() || residual.requires_grad())) return false;
  if (y.scalar_type() != torch::kFloat32 || gate.scalar_type() != weight.scalar_type() ||
      norm_weight.scalar_type() != weight.scalar_type() || norm_weight.numel() != y.size(2)) {
    return false;
  }
  if (gate.dim() != 3 || gate.sizes() != y.sizes() || gate.stride(2) != 1) return false;
  if (group_size < 1 || y.size(2) % group_size != 0) return false;
  if (residual.dim() != 3 || residual.size(0) != y.size(0) || residual.size(1) != 1 ||
      residual.size(2) != weight.size(0) || !residual.is_contiguous()) {
    return false;
  }
  return residual.scalar_type() == torch::kFloat32 || residual.scalar_type() == weight.scalar_type();
}

torch::Tensor gated_norm_out_proj(const torch::Tensor& y, const torch::Tensor& gate, const torch::Tensor& norm_weight,
                                  double eps, int64_t group_size, const torch::Tensor& weight,
                                  const torch::Tensor& residual) {
  TORCH_CHECK(gated_norm_out_proj_supported(y, gate, norm_weight, group_size, weight, residual),
              "cuda gated_norm_out_proj: these tensors are past the kernel's limits (gated_norm_out_proj_supported)");
  LaunchCheck("gated_norm_out_proj").device(y, "y").device(gate, "gate").device(norm_weight, "norm_weight")
      .device(weight, "weight").device(residual, "residual");
  const c10::cuda::CUDAGuard on_device(y.device());
  const torch::Tensor nw = norm_weight.contiguous();
  torch::Tensor out = torch::empty(residual.sizes(), residual.options());
  k::GatedNormOutProjParams p;
  p.act = act_of(weight, "gated_norm_out_proj");
  p.residual_act = act_of(residual, "gated_norm_out_proj");
  p.batch = y.size(0);
  p.channels = y.size(2);
  p.group_size = group_size;
  p.out_features = weight.size(0);
  p.y = y.data_ptr<float>();
  p.gate = gate.data_ptr();
  p.gate_stride = gate.stride(0);
  p.norm_weight = nw.data_ptr();
  p.eps = static_cast<float>(eps);
  p.weight = weight.data_ptr();
  p.residual = residual.data_ptr();
  p.out = out.data_ptr();
  check(k::gated_norm_out_proj_forward(p, stream()), "gated_norm_out_proj");
  return out;
}

}  // namespace mambadiff::fused
