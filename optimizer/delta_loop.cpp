#include "optimizer/delta_loop.h"

#if MAMBADIFF_CUDA_PATH
#include "cuda_path/fused_ops.h"
#endif

#include <limits>

namespace mambadiff {

namespace {

// torch.optim.Adam's defaults.
constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;

// logits[V] without entry t: the competitors of target t. narrow + cat, no index tensor (an index
// built on the host would be a host-to-device copy, which a CUDA-graph capture forbids).
torch::Tensor others(const torch::Tensor& logits, int64_t t) {
  const int64_t V = logits.size(0);
  return torch::cat({logits.narrow(0, 0, t), logits.narrow(0, t + 1, V - t - 1)});
}

}  // namespace

torch::Tensor delta_loss(const std::vector<torch::Tensor>& logits, const std::vector<int64_t>& target,
                         const std::string& loss, double margin) {
  torch::Tensor total = torch::zeros({}, logits[0].options().dtype(torch::kFloat32));
  for (size_t k = 0; k < target.size(); ++k) {
    const torch::Tensor l = logits[k].to(torch::kFloat32);  // [V]
    if (loss == "ce") {
      total = total - torch::log_softmax(l, 0)[target[k]];
    } else {
      total = total + torch::relu(others(l, target[k]).max() - l[target[k]] + margin);
    }
  }
  return total;
}

torch::Tensor delta_statistics(const std::vector<torch::Tensor>& rows, const std::vector<int64_t>& target,
                               const std::vector<torch::Tensor>& deltas, const torch::Tensor& loss) {
  const auto f64 = rows[0].options().dtype(torch::kFloat64);
  torch::Tensor rank = torch::zeros({}, f64);
  torch::Tensor margin = torch::full({}, std::numeric_limits<double>::infinity(), f64);
  for (size_t k = 0; k < target.size(); ++k) {
    const torch::Tensor l = rows[k].to(torch::kFloat64);
    const int64_t t = target[k];
    // rank = 1 + the logits strictly above the target's (as rank_of); non-finite logits rank V + 1 (NaN compares
    // false with everything and would make the target "rank 1"). Device ops only.
    const torch::Tensor finite_rank = 1 + (l > l[t]).sum().to(torch::kFloat64);
    const torch::Tensor no_rank = torch::full({}, static_cast<double>(l.size(0) + 1), f64);
    rank = torch::maximum(rank, torch::where(torch::isfinite(l).all(), finite_rank, no_rank));
    margin = torch::minimum(margin, l[t] - others(l, t).max());
  }
  torch::Tensor norm2 = torch::zeros({}, f64);
  for (const auto& d : deltas) norm2 = norm2 + d.to(torch::kFloat64).pow(2).sum();
  return torch::stack({loss.to(torch::kFloat64).reshape({}), rank, margin, norm2.sqrt()});
}

void adam_update(std::vector<torch::Tensor> params, const std::vector<torch::Tensor>& grads,
                 std::vector<torch::Tensor> m, std::vector<torch::Tensor> v, const torch::Tensor& step, double lr) {
  torch::NoGradGuard no_grad;
  // ATen's fused multi-tensor Adam (what torch.optim.Adam(fused=True) calls): one launch for all
  // layers on a GPU, and it reads the step number from a device tensor, so it can be replayed.
  const std::vector<torch::Tensor> steps(params.size(), step);
  // Contiguous gradients: autograd may hand back a strided or expanded one, and the fused kernel
  // walks raw memory (the last layer's Δ got such a gradient and was sent uphill).
  std::vector<torch::Tensor> dense;
  for (const auto& g : grads) dense.push_back(g.contiguous());
  torch::_fused_adam_(params, dense, m, v, /*max_exp_avg_sqs=*/{}, steps, lr, kBeta1, kBeta2, /*weight_decay=*/0.0,
                      kEps, /*amsgrad=*/false, /*maximize=*/false);
}

DeltaLoop::DeltaLoop(ExecutionPath& path, Mamba2Cache& cache, const Mamba2Cache::Snapshot& base,
                     const OptimizeOptions& o)
    : path_(path), cache_(cache), base_(base), options_(o) {
  const auto& c = path.config();
  const auto dev = path.device();
  const auto ids = torch::TensorOptions().dtype(torch::kInt64).device(dev);
  tokens_.push_back(torch::full({1, 1}, o.prompt.back(), ids));
  for (size_t k = 0; k + 1 < o.target.size(); ++k) tokens_.push_back(torch::full({1, 1}, o.target[k], ids));
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(dev);
  for (int64_t l : o.layers) {
    delta_[l] = torch::zeros({1, c.num_heads, c.head_dim, c.state_size}, f32).requires_grad_(true);
    previous_[l] = torch::zeros_like(delta_[l]);
    adam_m_[l] = torch::zeros_like(delta_[l]);
    adam_v_[l] = torch::zeros_like(delta_[l]);
  }
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(dev);
  adam_steps_ = torch::zeros({}, f32);  // float32, as the fused Adam reads it (exact to 2^24 steps)
  stats_ = torch::zeros({4}, f64);
}

std::vector<torch::Tensor> DeltaLoop::logits() {
  cache_.restore(base_);
  for (const auto& [layer, d] : delta_) {
    auto& state = cache_.ssm_states[static_cast<size_t>(layer)];
    state.copy_(base_.ssm_states[static_cast<size_t>(layer)] + d.to(state.scalar_type()));
  }
  std::vector<torch::Tensor> rows;
  for (const auto& token : tokens_) rows.push_back(path_.forward_validated(token, cache_).logits[0][0]);  // [V]
  return rows;
}

void DeltaLoop::iterate() {
  const auto rows = logits();
  const torch::Tensor loss = delta_loss(rows, options_.target, options_.loss, options_.margin);
  std::vector<int64_t> layers;
  std::vector<torch::Tensor> params;
  for (const auto& [layer, d] : delta_) {
    layers.push_back(layer);
    params.push_back(d);
  }
  // allow_unused: a Δ whose layer cannot reach the logits gets no gradient (treated as zero).
  const auto grads = torch::autograd::grad({loss}, params, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                           /*create_graph=*/false, /*allow_unused=*/true);
  torch::NoGradGuard no_grad;
  {  // statistics of this Δ, in float64 on the device: one kernel on the cuda path's device
    std::vector<torch::Tensor> detached;
    for (const auto& r : rows) detached.push_back(r.detach());
    std::vector<torch::Tensor> deltas;
    for (const auto& p : params) deltas.push_back(p.detach());
#if MAMBADIFF_CUDA_PATH
    const bool fused = fused::delta_statistics(detached, options_.target, deltas, loss.detach(), stats_);
#else
    const bool fused = false;
#endif
    if (!fused) stats_.copy_(delta_statistics(detached, options_.target, deltas, loss.detach()));
  }
  adam_steps_.add_(1);
  std::vector<torch::Tensor> g(params.size()), m, v;
  for (size_t i = 0; i < params.size(); ++i) {
    previous_[layers[i]].copy_(params[i]);
    g[i] = grads[i].defined() ? grads[i] : torch::zeros_like(params[i]);
    m.push_back(adam_m_[layers[i]]);
    v.push_back(adam_v_[layers[i]]);
  }
  if (options_.optimizer == "adam") {
    adam_update(params, g, m, v, adam_steps_, options_.lr);
  } else {
    for (size_t i = 0; i < params.size(); ++i) params[i].sub_(options_.lr * g[i].sign());  // signed PGD
  }
  for (auto& p : params) {  // projection onto the budget after every step
    if (options_.budget_linf > 0) p.clamp_(-options_.budget_linf, options_.budget_linf);
    if (options_.budget_l2 > 0) p.mul_(torch::clamp_max(options_.budget_l2 / p.norm(), 1.0));
  }
}

StepReport DeltaLoop::report(int64_t step) const {
  const torch::Tensor s = stats_.to(torch::kCPU);
  const double* v = s.data_ptr<double>();
  return StepReport{step, v[0], static_cast<int64_t>(v[1]), v[2], v[3]};
}

void DeltaLoop::undo_last_update() {
  torch::NoGradGuard no_grad;
  for (auto& [layer, d] : delta_) d.copy_(previous_[layer]);
}

}  // namespace mambadiff
