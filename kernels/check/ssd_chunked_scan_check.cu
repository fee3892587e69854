// The chunked SSD scan beside its CPU reference (llm.c's dev/cuda habit): a float64 sequential
// scan on the host, the sequential fp32 kernel (kernels/ssd_chunk_scan.cu) and the chunked kernel
// (kernels/ssd_chunked_scan.cu) on the same inputs, over shapes chosen to hit every edge — tails
// of every tile (T, P, N not multiples of 64 / 32), chunk sizes 1, 7, 64, 256 and longer than the
// sequence, groups 1 … heads, dt bias + softplus + limit, initial state or none, zero tokens, and a
// 70,000-token prefill (past the ~61K where mamba_ssm #1015's 32-bit offsets overflowed).
//
// Rule (the harness's, harness/compare.h): error = max |out - ref| / max |ref| per tensor; the
// chunked kernel passes when its error <= 4 x the sequential fp32 kernel's error + a floor: 1e-6 for
// fp32 inputs (fp32 FMAs: the harness's fp32 floor); for bf16 inputs with split-TF32 products
// (~22 significant bits a product, summed over up to 256 terms of random sign: x 2^4) 2^-22 · 2^4 =
// 2^-18. With bf16 products every computed operand is rounded once to bf16 (8 significant bits:
// unit roundoff u = 2^-8), and the rule is the forward error bound of a sum of rounded products,
// element by element:
//   |out - ref| <= (k u + 2^-16) · Σ|terms| + 1e-6 · max|ref|
// where Σ|terms| is the same scan run on |x|, |B|, |C|, |D|, |initial| (every decay and dt is
// positive, so that scan sums the absolute values of every term of each output), k = 1 for the
// final state (the decay-weighted x of each chunk's state, rounded once) and k = 3 for y (the
// entering state, already off by u, rounded again, times exp(cum) C rounded: (1 + u)^3), and 2^-16
// (256 x 2^-24) covers the fp32 sums over up to 256 terms. That bound holds for any inputs but is
// loose where many terms of random sign sum (one dropped term of 256 can hide in it), so the rule
// also asks error <= 2u = 2^-7 of max|ref| (the relative unit above): a dropped term, chunk or
// decay moves an output by a good fraction of its scale. Measured on an H200 (2026-12-02): errors
// 1.4e-3 ... 2.9e-3 of scale, 0.07-0.19 of the bound for y and 0.64-0.73 for the final state (whose
// terms are each rounded once, at up to u).
// Every bf16 case runs both product modes. It must also be bit-identical run to run.
//
// Usage: ssd_chunked_scan_check [--bench | --small]   exit 0 all pass, 1 a failure, 77 no CUDA device.
// --bench also times the issue's shapes (chunked vs sequential kernel, CUDA events, median of 20);
// --bench-only times without checking (for a profiler); --small leaves out the 70K-token case (for compute-sanitizer, which slows kernels ~100x).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/fused_kernels.h"

namespace k = mambadiff::kernels;

namespace {

#define CUDA_OK(expr)                                                                             \
  do {                                                                                            \
    const cudaError_t e_ = static_cast<cudaError_t>(expr);                                        \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

struct Case {
  const char* name;
  int64_t B, T, H, P, G, N, chunk;
  bool bf16, initial, dt_transform;
  bool dt_spike = false;  // one token of every (b, h) gets dt = 1e4: Σ dt A jumps by ~1e4 … 5e4
};

float softplus(float v) { return v > 20.0f ? v : std::log1p(std::exp(v)); }

// Host inputs: activations already rounded to the run's dtype, so reference and kernels see the
// same values.
struct Inputs {
  Case c;
  std::vector<float> x, Bm, Cm, dt_raw, dt_bias, A, D, initial;
  float dt_min = -INFINITY, dt_max = INFINITY;
  // dt' = clamp(softplus(dt + bias)) when the case transforms dt, else dt itself (in fp32: the
  // value both kernels use).
  float dt_of(int64_t b, int64_t t, int64_t h) const {
    float v = dt_raw[(b * c.T + t) * c.H + h];
    if (!c.dt_transform) return v;
    v = softplus(v + dt_bias[h]);
    return std::min(std::max(v, dt_min), dt_max);
  }
};

Inputs make_inputs(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  Inputs in{c};
  const auto act = [&](float v) { return c.bf16 ? __bfloat162float(__float2bfloat16(v)) : v; };
  in.x.resize(c.B * c.T * c.H * c.P);
  for (auto& v : in.x) v = act(normal(rng));
  in.Bm.resize(c.B * c.T * c.G * c.N);
  for (auto& v : in.Bm) v = act(normal(rng));
  in.Cm.resize(c.B * c.T * c.G * c.N);
  for (auto& v : in.Cm) v = act(normal(rng));
  in.dt_raw.resize(c.B * c.T * c.H);
  // Raw dt around softplus⁻¹(0.01 … 0.1) when transformed, else positive dt directly: decays of
  // exp(dt A) between ~0.7 and ~1, so a state carries across many chunks.
  for (auto& v : in.dt_raw) v = c.dt_transform ? normal(rng) - 3.0f : 0.01f + 0.09f * uniform(rng);
  in.dt_bias.resize(c.H);
  for (auto& v : in.dt_bias) v = 0.5f * normal(rng);
  in.A.resize(c.H);
  for (auto& v : in.A) v = -(0.5f + 4.0f * uniform(rng));
  in.D.resize(c.H);
  for (auto& v : in.D) v = normal(rng);
  if (c.initial) {
    in.initial.resize(c.B * c.H * c.P * c.N);
    for (auto& v : in.initial) v = normal(rng);
  }
  if (c.dt_spike) {
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.H; ++h) in.dt_raw[(b * c.T + c.T / 3) * c.H + h] = 1e4f;
  }
  if (c.dt_transform) {
    in.dt_min = 0.001f;
    in.dt_max = 0.1f;
  }
  return in;
}

// The float64 sequential scan: s_t = exp(dt A) s + dt x ⊗ B; y = C · s + D x.
void reference(const Inputs& in, std::vector<double>& y, std::vector<double>& state);

// Σ|terms| of every output: the same scan over the inputs' absolute values (see the top of the file).
void reference_of_magnitudes(const Inputs& in, std::vector<double>& y_abs, std::vector<double>& state_abs) {
  Inputs magnitudes = in;
  for (std::vector<float>* v : {&magnitudes.x, &magnitudes.Bm, &magnitudes.Cm, &magnitudes.D, &magnitudes.initial})
    for (float& e : *v) e = std::abs(e);
  reference(magnitudes, y_abs, state_abs);
}

void reference(const Inputs& in, std::vector<double>& y, std::vector<double>& state) {
  const Case& c = in.c;
  y.assign(c.B * c.T * c.H * c.P, 0.0);
  state.assign(c.B * c.H * c.P * c.N, 0.0);
  if (c.initial) std::copy(in.initial.begin(), in.initial.end(), state.begin());
  for (int64_t b = 0; b < c.B; ++b) {
    for (int64_t t = 0; t < c.T; ++t) {
      const int64_t row = b * c.T + t;
      for (int64_t h = 0; h < c.H; ++h) {
        const int64_t g = h / (c.H / c.G);
        const double dt = in.dt_of(b, t, h), decay = std::exp(dt * in.A[h]);
        const float* Bv = &in.Bm[(row * c.G + g) * c.N];
        const float* Cv = &in.Cm[(row * c.G + g) * c.N];
        for (int64_t p = 0; p < c.P; ++p) {
          const double xv = in.x[(row * c.H + h) * c.P + p];
          double* s = &state[((b * c.H + h) * c.P + p) * c.N];
          double acc = 0.0;
          for (int64_t n = 0; n < c.N; ++n) {
            s[n] = decay * s[n] + dt * xv * Bv[n];
            acc += Cv[n] * s[n];
          }
          y[(row * c.H + h) * c.P + p] = acc + in.D[h] * xv;
        }
      }
    }
  }
}

// The rule's floor (see the top of the file).
double floor_of(const Case& c) { return c.bf16 ? 0x1p-18 : 1e-6; }

template <typename V>
double max_abs(const std::vector<V>& v) {
  double m = 0.0;
  for (V e : v) m = std::max(m, std::abs(static_cast<double>(e)));
  return m;
}

// max |a - ref| / max |ref| (NaN anywhere: +inf).
double error(const std::vector<float>& a, const std::vector<double>& ref) {
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    worst = std::max(worst, std::abs(a[i] - ref[i]));
  }
  const double scale = max_abs(ref);
  return scale > 0 ? worst / scale : worst;
}

// The bf16-products rule's use of its bound: max over elements of |out - ref| / bound (<= 1 passes).
double bound_use(const std::vector<float>& out, const std::vector<double>& ref, const std::vector<double>& magnitude,
                 int k) {
  constexpr double u = 0x1p-8, fp32_sums = 0x1p-16;
  const double scale = max_abs(ref);
  double worst = 0.0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) return INFINITY;
    worst = std::max(worst, std::abs(out[i] - ref[i]) / ((k * u + fp32_sums) * magnitude[i] + 1e-6 * scale));
  }
  return worst;
}

template <typename T>
T* upload(const std::vector<float>& host, bool bf16) {
  void* dev = nullptr;
  if (bf16) {
    std::vector<__nv_bfloat16> tmp(host.size());
    for (size_t i = 0; i < host.size(); ++i) tmp[i] = __float2bfloat16(host[i]);
    CUDA_OK(cudaMalloc(&dev, tmp.size() * sizeof(tmp[0]) + 1));
    CUDA_OK(cudaMemcpy(dev, tmp.data(), tmp.size() * sizeof(tmp[0]), cudaMemcpyHostToDevice));
  } else {
    CUDA_OK(cudaMalloc(&dev, host.size() * sizeof(float) + 1));
    CUDA_OK(cudaMemcpy(dev, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  return static_cast<T*>(dev);
}

std::vector<float> download(const float* dev, size_t n) {
  std::vector<float> host(n);
  CUDA_OK(cudaMemcpy(host.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost));
  return host;
}

// Device copies of one case's inputs, in the layout of the cuda path: x, B, C as column slices of
// one [B, T, H·P + 2·G·N] conv-output row (the kernels read them with a token stride).
struct DeviceCase {
  const Inputs& in;
  int64_t stride;
  void* xbc = nullptr;
  float *dt_raw = nullptr, *dt_processed = nullptr, *dt_bias = nullptr, *A = nullptr, *D = nullptr,
        *initial = nullptr, *y = nullptr, *final_state = nullptr, *y_seq = nullptr, *final_seq = nullptr;
  void* workspace = nullptr;

  explicit DeviceCase(const Inputs& inputs) : in(inputs) {
    const Case& c = in.c;
    stride = c.H * c.P + 2 * c.G * c.N;
    std::vector<float> rows(c.B * c.T * stride);
    for (int64_t r = 0; r < c.B * c.T; ++r) {
      std::copy_n(&in.x[r * c.H * c.P], c.H * c.P, &rows[r * stride]);
      std::copy_n(&in.Bm[r * c.G * c.N], c.G * c.N, &rows[r * stride + c.H * c.P]);
      std::copy_n(&in.Cm[r * c.G * c.N], c.G * c.N, &rows[r * stride + c.H * c.P + c.G * c.N]);
    }
    xbc = upload<void>(rows, c.bf16);
    dt_raw = upload<float>(in.dt_raw, false);
    std::vector<float> processed(in.dt_raw.size());
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t t = 0; t < c.T; ++t)
        for (int64_t h = 0; h < c.H; ++h) processed[(b * c.T + t) * c.H + h] = in.dt_of(b, t, h);
    dt_processed = upload<float>(processed, false);
    dt_bias = upload<float>(in.dt_bias, false);
    A = upload<float>(in.A, false);
    D = upload<float>(in.D, false);
    if (c.initial) initial = upload<float>(in.initial, false);
    const size_t ys = c.B * c.T * c.H * c.P, ss = c.B * c.H * c.P * c.N;
    CUDA_OK(cudaMalloc(&y, ys * 4 + 4));
    CUDA_OK(cudaMalloc(&y_seq, ys * 4 + 4));
    CUDA_OK(cudaMalloc(&final_state, ss * 4));
    CUDA_OK(cudaMalloc(&final_seq, ss * 4));
    CUDA_OK(cudaMalloc(&workspace, k::ssd_chunked_scan_workspace_bytes(shape(), c.chunk) + 256));
  }
  ~DeviceCase() {
    for (void* p : {xbc, static_cast<void*>(dt_raw), static_cast<void*>(dt_processed), static_cast<void*>(dt_bias),
                    static_cast<void*>(A), static_cast<void*>(D), static_cast<void*>(initial), static_cast<void*>(y),
                    static_cast<void*>(final_state), static_cast<void*>(y_seq), static_cast<void*>(final_seq),
                    workspace})
      cudaFree(p);
  }
  k::ScanShape shape() const { return {in.c.B, in.c.T, in.c.H, in.c.P, in.c.G, in.c.N}; }
  k::Act act() const { return in.c.bf16 ? k::Act::kBFloat16 : k::Act::kFloat32; }
  const char* x_ptr() const { return static_cast<const char*>(xbc); }
  size_t elem() const { return in.c.bf16 ? 2 : 4; }

  bool bf16_products = false;  // bf16 cases: which product mode run_chunked() uses
  int stages = 5;              // profiling: how many of the five kernels run_chunked() launches

  k::ChunkedScanParams params() const {
    const Case& c = in.c;
    k::ChunkedScanParams p;
    p.act = act();
    p.bf16_products = bf16_products;
    p.stages = stages;
    p.shape = shape();
    p.chunk_size = c.chunk;
    p.x = x_ptr();
    p.Bm = x_ptr() + c.H * c.P * elem();
    p.Cm = x_ptr() + (c.H * c.P + c.G * c.N) * elem();
    p.xbc_token_stride = stride;
    p.dt = c.dt_transform ? dt_raw : dt_processed;
    p.dt_token_stride = c.H;
    if (c.dt_transform) {
      p.dt_bias = dt_bias;
      p.dt_softplus = true;
      p.dt_min = in.dt_min;
      p.dt_max = in.dt_max;
    }
    p.A = A;
    p.D = D;
    p.initial = initial;
    p.y = y;
    p.final_state = final_state;
    return p;
  }
  void run_chunked() { CUDA_OK(k::ssd_chunked_scan_forward(params(), workspace, nullptr)); }
  void run_sequential() {
    const Case& c = in.c;
    CUDA_OK(k::ssd_chunk_scan_forward(act(), shape(), x_ptr(), x_ptr() + c.H * c.P * elem(),
                                      x_ptr() + (c.H * c.P + c.G * c.N) * elem(), stride, dt_processed, A, D, initial,
                                      y_seq, final_seq, nullptr));
  }
};

bool check(const Case& c, bool bf16_products) {
  const Inputs in = make_inputs(c, 1234u + static_cast<uint32_t>(c.T * 7 + c.chunk));
  std::vector<double> y_ref, s_ref;
  reference(in, y_ref, s_ref);
  DeviceCase d(in);
  d.bf16_products = bf16_products;
  d.run_chunked();
  d.run_sequential();
  CUDA_OK(cudaDeviceSynchronize());
  const size_t ys = y_ref.size(), ss = s_ref.size();
  const std::vector<float> y = download(d.y, ys), fs = download(d.final_state, ss);
  const std::vector<float> y_seq = download(d.y_seq, ys), fs_seq = download(d.final_seq, ss);
  d.run_chunked();
  CUDA_OK(cudaDeviceSynchronize());
  const bool deterministic = download(d.y, ys) == y && download(d.final_state, ss) == fs;
  const double ey = error(y, y_ref), es = error(fs, s_ref), ey_seq = error(y_seq, y_ref), es_seq = error(fs_seq, s_ref);
  const auto within = [&](double chunked, double seq) { return chunked <= 4.0 * seq + floor_of(c); };
  bool ok = deterministic;
  std::string bound;
  if (bf16_products) {
    std::vector<double> y_abs, s_abs;
    reference_of_magnitudes(in, y_abs, s_abs);
    const double use_y = bound_use(y, y_ref, y_abs, 3), use_s = bound_use(fs, s_ref, s_abs, 1);
    ok = ok && use_y <= 1.0 && use_s <= 1.0 && ey <= 0x1p-7 && es <= 0x1p-7;
    char text[96];
    std::snprintf(text, sizeof text, "; of the bf16-products bound: y %.2f, final %.2f", use_y, use_s);
    bound = text;
  } else {
    ok = ok && within(ey, ey_seq) && within(es, es_seq);
  }
  std::printf("%-4s %-34s b%ld T%ld h%ld p%ld g%ld n%ld chunk %ld %s: y err %.2e (sequential %.2e), final %.2e (%.2e)%s%s\n",
              ok ? "ok" : "FAIL", c.name, c.B, c.T, c.H, c.P, c.G, c.N, c.chunk,
              !c.bf16 ? "fp32" : bf16_products ? "bf16 (bf16 products)" : "bf16 (split-tf32)", ey, ey_seq,
              es, es_seq, bound.c_str(), deterministic ? "" : "  NOT DETERMINISTIC");
  return ok;
}

float median_ms(const std::function<void()>& f, int reps) {
  cudaEvent_t start, stop;
  CUDA_OK(cudaEventCreate(&start));
  CUDA_OK(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) f();
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    CUDA_OK(cudaEventRecord(start));
    f();
    CUDA_OK(cudaEventRecord(stop));
    CUDA_OK(cudaEventSynchronize(stop));
    float t = 0;
    CUDA_OK(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// The decode step (T = 1) through ssd_chunk_scan_forward — decode_step_kernel when state_size % 4
// == 0 — updating the state IN PLACE (final_state == initial, as the cuda path's decode does),
// against the float64 step and the chunked kernel at T = 1 (the harness's rule both ways).
bool check_decode(const Case& c) {
  const Inputs in = make_inputs(c, 77u + static_cast<uint32_t>(c.N * 3 + c.P));
  std::vector<double> y_ref, s_ref;
  reference(in, y_ref, s_ref);
  DeviceCase d(in);
  d.run_chunked();
  const size_t ys = y_ref.size(), ss = s_ref.size();
  float* state = nullptr;  // the in-place state: starts as the initial state (or zeros)
  CUDA_OK(cudaMalloc(&state, ss * 4));
  const auto reset_state = [&] {
    if (c.initial) CUDA_OK(cudaMemcpy(state, d.initial, ss * 4, cudaMemcpyDeviceToDevice));
    else CUDA_OK(cudaMemset(state, 0, ss * 4));
  };
  const auto step = [&] {
    CUDA_OK(k::ssd_chunk_scan_forward(d.act(), d.shape(), d.x_ptr(), d.x_ptr() + c.H * c.P * d.elem(),
                                      d.x_ptr() + (c.H * c.P + c.G * c.N) * d.elem(), d.stride, d.dt_processed, d.A,
                                      d.D, c.initial ? state : nullptr, d.y_seq, state, nullptr));
  };
  reset_state();
  step();
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> y = download(d.y_seq, ys), fs = download(state, ss);
  reset_state();
  step();
  CUDA_OK(cudaDeviceSynchronize());
  const bool deterministic = download(d.y_seq, ys) == y && download(state, ss) == fs;
  cudaFree(state);
  const std::vector<float> y_chunked = download(d.y, ys), fs_chunked = download(d.final_state, ss);
  const double ey = error(y, y_ref), es = error(fs, s_ref), ey_c = error(y_chunked, y_ref), es_c = error(fs_chunked, s_ref);
  // Both sides in fp32 math (the chunked kernel at T = 1 with split products: a single token has
  // no computed operand worth rounding).
  const auto within = [&](double a, double b) { return a <= 4.0 * b + floor_of(c); };
  const bool ok = deterministic && within(ey, ey_c) && within(es, es_c) && within(ey_c, ey) && within(es_c, es);
  std::printf("%-4s decode step, in place: %-17s b%ld h%ld p%ld g%ld n%ld %s: y err %.2e (chunked %.2e), state %.2e (%.2e)%s\n",
              ok ? "ok" : "FAIL", c.name, c.B, c.H, c.P, c.G, c.N, c.bf16 ? "bf16" : "fp32", ey, ey_c, es, es_c,
              deterministic ? "" : "  NOT DETERMINISTIC");
  return ok;
}

void bench_decode(int64_t batch) {
  const Case c{"decode", batch, 1, 80, 64, 1, 128, 256, true, true, false};
  Inputs in{c};
  in.x.assign(c.B * c.H * c.P, 0.5f);
  in.Bm.assign(c.B * c.G * c.N, 0.25f);
  in.Cm.assign(c.B * c.G * c.N, 0.25f);
  in.dt_raw.assign(c.B * c.H, 0.05f);
  in.dt_bias.assign(c.H, 0.0f);
  in.A.assign(c.H, -1.0f);
  in.D.assign(c.H, 1.0f);
  in.initial.assign(c.B * c.H * c.P * c.N, 0.0f);
  DeviceCase d(in);
  const float ms = median_ms([&] {
    CUDA_OK(k::ssd_chunk_scan_forward(d.act(), d.shape(), d.x_ptr(), d.x_ptr() + c.H * c.P * d.elem(),
                                      d.x_ptr() + (c.H * c.P + c.G * c.N) * d.elem(), d.stride, d.dt_processed, d.A,
                                      d.D, d.initial, d.y_seq, d.initial, nullptr));
  }, 50);
  const double bytes = 2.0 * 4 * c.B * c.H * c.P * c.N;  // the fp32 state read and written
  std::printf("bench decode step b%ld h80 p64 n128, fp32 state in place: %.1f us, %.0f GB/s of state\n", batch, ms * 1e3,
              bytes / (ms * 1e-3) / 1e9);
}

void bench(const Case& c, bool bf16_products) {
  Inputs in{c};  // random contents do not matter for timing: fill cheaply
  in.x.assign(c.B * c.T * c.H * c.P, 0.5f);
  in.Bm.assign(c.B * c.T * c.G * c.N, 0.25f);
  in.Cm.assign(c.B * c.T * c.G * c.N, 0.25f);
  in.dt_raw.assign(c.B * c.T * c.H, 0.05f);
  in.dt_bias.assign(c.H, 0.0f);
  in.A.assign(c.H, -1.0f);
  in.D.assign(c.H, 1.0f);
  if (c.initial) in.initial.assign(c.B * c.H * c.P * c.N, 0.0f);
  DeviceCase d(in);
  d.bf16_products = bf16_products;
  const float chunked = median_ms([&] { d.run_chunked(); }, 20);
  const float sequential = median_ms([&] { d.run_sequential(); }, 5);
  // Each kernel's share: the first k of the five launched, k = 1 ... 4, differenced.
  const char* names[] = {"cumsum", "C·Bᵀ", "chunk states", "state passing", "output"};
  std::string shares;
  float before = 0.0f;
  for (int k = 1; k <= 5; ++k) {
    d.stages = k;
    const float upto = k == 5 ? chunked : median_ms([&] { d.run_chunked(); }, 20);
    char part[64];
    std::snprintf(part, sizeof part, "%s%s %.3f", k == 1 ? "" : ", ", names[k - 1], upto - before);
    shares += part;
    before = upto;
  }
  d.stages = 5;
  std::printf("bench %-26s b%ld L%ld h%ld p%ld g%ld n%ld %s chunk %ld: chunked %.3f ms (%s), sequential %.3f ms\n",
              c.name, c.B, c.T, c.H, c.P, c.G, c.N,
              !c.bf16 ? "fp32" : bf16_products ? "bf16 (bf16 products)" : "bf16 (split-tf32)", c.chunk, chunked,
              shares.c_str(), sequential);
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  const std::vector<Case> cases = {
      // name                                 B   T     H   P   G  N    chunk  bf16  init  dt'
      {"tails everywhere", 2, 300, 4, 20, 2, 40, 64, false, true, true},
      {"tails everywhere", 2, 300, 4, 20, 2, 40, 64, true, true, true},
      {"chunk 1", 1, 37, 2, 8, 1, 16, 1, false, true, false},
      {"chunk 7 (odd)", 1, 100, 3, 16, 3, 32, 7, false, false, true},
      {"chunk longer than the sequence", 2, 50, 2, 64, 1, 128, 256, false, true, false},
      {"groups = heads", 1, 260, 8, 32, 8, 64, 64, true, true, true},
      {"one group, many heads", 1, 513, 12, 64, 1, 128, 256, false, false, false},
      {"one group, many heads", 1, 513, 12, 64, 1, 128, 256, true, false, false},
      {"two tokens", 3, 2, 2, 64, 2, 128, 256, false, true, true},
      {"zero tokens (state passes through)", 2, 0, 2, 16, 1, 32, 256, false, true, false},
      {"head_dim 128, state 256", 1, 200, 2, 128, 1, 256, 64, false, true, false},
      {"70K tokens (64-bit offsets)", 1, 70000, 2, 64, 1, 128, 256, true, true, true},
      // scan_diff's corpus (pokes.bin) on the H200: a dt of 1e4 inside a chunk; fp32 cumulative
      // sums then lost 5% of exp(cum_t - cum_s) to cancellation for every later pair of tokens.
      {"one huge dt inside a chunk", 2, 300, 4, 16, 2, 32, 256, false, true, false, true},
      {"one huge dt inside a chunk", 2, 300, 4, 16, 2, 32, 256, true, true, false, true},
  };
  const std::string mode = argc > 1 ? argv[1] : "";
  bool all = true;
  for (const Case& c : cases) {
    if ((mode == "--small" && c.T > 10000) || mode == "--bench-only") continue;
    all = check(c, false) && all;
    if (c.bf16) all = check(c, true) && all;
  }
  const std::vector<Case> decode_cases = {
      // name                  B  T  H   P   G  N    chunk  bf16  init   dt'
      {"rows tail, N 40", 1, 1, 4, 6, 1, 40, 256, false, true, false},
      {"rows tail, N 40", 1, 1, 4, 6, 1, 40, 256, true, true, false},
      {"N 256, groups", 3, 1, 6, 64, 3, 256, 256, false, true, false},
      {"130m-like", 2, 1, 24, 64, 1, 128, 256, true, true, false},
      {"no initial state", 2, 1, 4, 64, 2, 128, 256, false, false, false},
      {"N 36 (not 128-aligned)", 1, 1, 2, 33, 1, 36, 256, false, true, false},
      // batch × heads >= 1024: 8 rows a warp (kernels/state_update_rows.cuh), one with a rows tail
      {"8 rows/warp", 16, 1, 64, 64, 2, 128, 256, false, true, false},
      {"8 rows/warp", 16, 1, 64, 64, 1, 128, 256, true, true, false},
      {"8 rows/warp, P 72", 8, 1, 128, 72, 4, 64, 256, false, true, false},
  };
  for (const Case& c : decode_cases) {
    if (mode != "--bench-only") all = check_decode(c) && all;
  }
  if (mode == "--bench" || mode == "--bench-only") {
    bench_decode(1);
    bench_decode(64);
    for (const bool bf16_products : {true, false}) {
      bench({"issue goal shape", 8, 8192, 80, 64, 1, 128, 256, true, true, false}, bf16_products);
      bench({"groups 8", 4, 4096, 64, 64, 8, 128, 256, true, true, false}, bf16_products);
      bench({"launch-bound", 1, 2048, 24, 64, 1, 128, 256, true, true, false}, bf16_products);
    }
    bench({"130m prefill fp32", 1, 2048, 24, 64, 1, 128, 256, false, true, false}, false);
  }
  std::printf("%s\n", all ? "all cases pass" : "FAILURES");
  return all ? 0 : 1;
}
