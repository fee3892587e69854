// ssd_chunked_scan: the selective scan of a prefill or continue (T > 1) in the chunked SSD form
// (Dao & Gu, "Transformers are SSMs", §6), four launches:
//
//   1. chunk_cumsum   per (b, h, chunk): dt' = clamp(softplus(dt + dt_bias), lo, hi) (each part
//                     optional) and the running sum cum_t = Σ_{s<=t} dt'_s A_h inside the chunk.
//   2. chunk_cb       per (b, g, chunk, t-tile, s-tile <= t-tile): CB[t, s] = C_t · B_s.
//   3. chunk_state    per (b, h, chunk, p-tile, n-tile): the chunk's own state contribution
//                       S_c[p, n] = Σ_s exp(cum_end - cum_s) dt'_s x_s[p] B_s[n].
//   4. state_passing  per (b, h, p·n slice), sequential over chunks: S_in[c] = the state entering
//                     chunk c (initial state for c = 0); final = exp(cum_end) S_in + S_c of the last.
//   5. chunk_output   per (b, h, chunk, t-tile, p-tile):
//                       y_t = exp(cum_t) C_t · S_in[c] + Σ_{s<=t} CB[t, s] exp(cum_t - cum_s) dt'_s x_s + D x_t
//
// The three products (C·Bᵀ, (w x)ᵀ·B, C·S and L·x) run on tensor cores as TF32 MMAs (wmma
// m16n16k8, fp32 accumulation). Plain TF32 keeps 10 mantissa bits: mamba_ssm's fp32 path diverges
// from the float64 reference for exactly that reason (docs/external.md). So every operand that is
// not already exact in TF32 is split, a = hi + lo with hi = tf32(a), lo = tf32(a - hi), and a·b is
// taken as hi·hi + hi·lo + lo·hi ("3xTF32"): about 21 bits of each product, fp32-class. bf16
// activations (x, B, C) are exact in TF32 (8 < 10 mantissa bits) and are not split; the computed
// operands (decay-weighted x, L, exp(cum) C, the states) always are.
//
// Every index is 64-bit (mamba_ssm #1015 overflowed 32-bit offsets past ~61K tokens). The chunk
// size is any positive number; the last chunk may be shorter (T % chunk != 0). Masked entries of
// L (s > t, or past the sequence) are zero, never exp of a positive difference (mamba_ssm PR #713).
#include <mma.h>

#include <type_traits>

#include "kernels/device_math.cuh"
#include "kernels/kernel_coverage.cuh"

namespace mambadiff::kernels {

namespace {

using device::load;
namespace wmma = nvcuda::wmma;

// ---- a 64 x 64 block tile of C += A · B on tensor cores ------------------------------------------

constexpr int kTile = 64;        // output tile of a block: kTile x kTile
constexpr int kTileK = 32;       // the slice of the reduction staged in shared memory per step
constexpr int kThreads = 128;    // 4 warps as 2 x 2, each a 32 x 32 quarter of the tile (2 x 2 fragments)
constexpr int kLdK = kTileK + 4;  // leading dims with 4 floats of padding against bank conflicts; both keep
constexpr int kLdM = kTile + 4;   // every fragment's start 32-byte aligned (16 * ld * 4 bytes, 8 * 4 bytes)
constexpr int kStageFloats = (kTile * kLdK > kTileK * kLdM ? kTile * kLdK : kTileK * kLdM);

// How an operand's tile lies in shared memory. kRowMajor: A as [m][k] (ld kLdK), B as [k][n] (ld
// kLdM); kColMajor: A as [k][m] (ld kLdM), B as [n][k] (ld kLdK). Each operand is staged in the
// layout that makes its global reads coalesced (the fastest-moving global index first).
enum class Layout { kRowMajor, kColMajor };

// Whether every value of the activation type is exact in TF32 (10 stored mantissa bits): bf16 (7)
// is, fp32 (23) is not and gets the 3xTF32 split.
template <typename T>
constexpr bool kExactInTf32 = std::is_same_v<T, __nv_bfloat16>;

template <Layout L>
using wmma_layout = std::conditional_t<L == Layout::kRowMajor, wmma::row_major, wmma::col_major>;

// The stage of a step (a then b), and after the last step the accumulated tile (out, over both).
struct SharedTile {
  static constexpr int kFloats = 2 * kStageFloats > kTile * kLdM ? 2 * kStageFloats : kTile * kLdM;
  float mem[kFloats];
  __device__ float* a() { return mem; }
  __device__ float* b() { return mem + kStageFloats; }
};

// Stages one slice of both operands in shared memory (a(m, k), b(k, n); 0 outside the problem)
// between two barriers: the previous step's reads of the stage are done before, the stage is
// complete after. Every thread of the block calls it.
template <Layout LA, Layout LB, class OperandA, class OperandB>
__device__ void fill(SharedTile& smem, OperandA a, OperandB b) {
  __syncthreads();  // the previous step is done reading the stage
#pragma unroll  // a fixed trip count: the loads of all iterations can be in flight together
  for (int e = threadIdx.x; e < kTile * kTileK; e += kThreads) {
    if constexpr (LA == Layout::kRowMajor) {
      const int m = e / kTileK, k = e % kTileK;
      smem.a()[m * kLdK + k] = a(m, k);
    } else {
      const int k = e / kTile, m = e % kTile;
      smem.a()[k * kLdM + m] = a(m, k);
    }
    if constexpr (LB == Layout::kRowMajor) {
      const int k = e / kTile, n = e % kTile;
      smem.b()[k * kLdM + n] = b(k, n);
    } else {
      const int n = e / kTileK, k = e % kTileK;
      smem.b()[n * kLdK + k] = b(k, n);
    }
  }
  __syncthreads();
}

// The accumulated kTile x kTile tile of a block; step() adds one staged slice of A · B. Steps with
// different operand layouts may add into the same tile (the accumulator does not depend on them).
class TileAccumulator {
 public:
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

  __device__ TileAccumulator() : warp_m_(threadIdx.x / 32 / 2), warp_n_(threadIdx.x / 32 % 2) {
    for (auto& row : acc_)
      for (auto& f : row) wmma::fill_fragment(f, 0.0f);
  }

  // acc += A · B over one kTileK slice of the reduction: a(m, k) and b(k, n) give the operands
  // (0 outside the problem), split_a / split_b say whether they need the 3xTF32 split. Every thread
  // of the block calls it (it synchronizes).
  template <Layout LA, Layout LB, class OperandA, class OperandB>
  __device__ void step(SharedTile& smem, OperandA a, OperandB b, bool split_a, bool split_b) {
    using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma_layout<LA>>;
    using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma_layout<LB>>;
    fill<LA, LB>(smem, a, b);
    constexpr int lda = LA == Layout::kRowMajor ? kLdK : kLdM, ldb = LB == Layout::kRowMajor ? kLdM : kLdK;
    for (int k0 = 0; k0 < kTileK; k0 += 8) {
      FragA a_hi[2], a_lo[2];
      FragB b_hi[2], b_lo[2];
      for (int i = 0; i < 2; ++i) {
        const int m0 = warp_m_ * 32 + i * 16;
        wmma::load_matrix_sync(a_hi[i], LA == Layout::kRowMajor ? &smem.a()[m0 * kLdK + k0] : &smem.a()[k0 * kLdM + m0], lda);
        split(a_hi[i], a_lo[i], split_a);
      }
      for (int j = 0; j < 2; ++j) {
        const int n0 = warp_n_ * 32 + j * 16;
        wmma::load_matrix_sync(b_hi[j], LB == Layout::kRowMajor ? &smem.b()[k0 * kLdM + n0] : &smem.b()[n0 * kLdK + k0], ldb);
        split(b_hi[j], b_lo[j], split_b);
      }
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
          // The small cross terms first, the leading product last.
          if (split_a) wmma::mma_sync(acc_[i][j], a_lo[i], b_hi[j], acc_[i][j]);
          if (split_b) wmma::mma_sync(acc_[i][j], a_hi[i], b_lo[j], acc_[i][j]);
          wmma::mma_sync(acc_[i][j], a_hi[i], b_hi[j], acc_[i][j]);
        }
      }
    }
  }

  // Writes the tile to the stage as out[m * kLdM + n] (kTile x kLdM floats over both halves of the
  // stage) and synchronizes, so every thread can read any element after.
  __device__ const float* store(SharedTile& smem) {
    float* out = smem.mem;
    __syncthreads();  // the last step's MMAs are done reading the stage
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(&out[(warp_m_ * 32 + i * 16) * kLdM + warp_n_ * 32 + j * 16], acc_[i][j], kLdM,
                                wmma::mem_row_major);
    __syncthreads();
    return out;
  }

 private:
  // hi = tf32(v); lo = tf32(v - hi) when the operand needs the split (else lo is unused).
  template <class Frag>
  __device__ static void split(Frag& hi, Frag& lo, bool needed) {
    for (int t = 0; t < hi.num_elements; ++t) {
      const float v = hi.x[t];
      const float h = wmma::__float_to_tf32(v);
      hi.x[t] = h;
      if (needed) lo.x[t] = wmma::__float_to_tf32(v - h);
    }
  }

  int warp_m_, warp_n_;
  FragC acc_[2][2];
};


// The same tile in plain fp32 FMAs (CUDA cores), for fp32 activations: 3xTF32 keeps ~22 bits of
// each product, and over a 256-token reduction that measured 2e-6 of the output's scale against the
// float64 reference — past the fp32 budget (4 x the sequential fp32 kernel's 1e-7, + 1e-6) that the
// harness gives a path. Thread (tm, tn) owns rows 4 tm … 4 tm + 3 and columns 8 tn … 8 tn + 7;
// every output is one fixed-order fp32 sum (deterministic).
class SimtAccumulator {
 public:
  __device__ SimtAccumulator() : tm_(threadIdx.x / 8), tn_(threadIdx.x % 8) {
    for (auto& row : acc_)
      for (float& v : row) v = 0.0f;
  }

  template <Layout LA, Layout LB, class OperandA, class OperandB>
  __device__ void step(SharedTile& smem, OperandA a, OperandB b, bool /*split_a*/, bool /*split_b*/) {
    fill<LA, LB>(smem, a, b);
    for (int k = 0; k < kTileK; ++k) {
      float av[4], bv[8];
      for (int i = 0; i < 4; ++i) {
        const int m = tm_ * 4 + i;
        av[i] = LA == Layout::kRowMajor ? smem.a()[m * kLdK + k] : smem.a()[k * kLdM + m];
      }
      for (int j = 0; j < 8; ++j) {
        const int n = tn_ * 8 + j;
        bv[j] = LB == Layout::kRowMajor ? smem.b()[k * kLdM + n] : smem.b()[n * kLdK + k];
      }
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 8; ++j) acc_[i][j] = fmaf(av[i], bv[j], acc_[i][j]);
    }
  }

  __device__ const float* store(SharedTile& smem) {
    float* out = smem.mem;
    __syncthreads();  // the last step is done reading the stage
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 8; ++j) out[(tm_ * 4 + i) * kLdM + tn_ * 8 + j] = acc_[i][j];
    __syncthreads();
    return out;
  }

 private:
  int tm_, tn_;
  float acc_[4][8];
};

// The accumulator of an activation type: tensor cores where the inputs are exact in TF32.
template <typename T>
using AccumulatorFor = std::conditional_t<kExactInTf32<T>, TileAccumulator, SimtAccumulator>;

// ---- the problem's geometry ------------------------------------------------------------------

struct Geometry {
  int64_t B, T, H, P, G, N, Q, chunks;
  int64_t xbc_stride;  // elements between consecutive (b, t) rows of x, B and C
  __device__ int64_t heads_per_group() const { return H / G; }
  __device__ int64_t chunk_len(int64_t c) const { return T - c * Q < Q ? T - c * Q : Q; }
  // Offset of row (b, t) of the [B, T, ...] activation rows.
  __device__ int64_t row(int64_t b, int64_t t) const { return (b * T + t) * xbc_stride; }
};

Geometry geometry_of(const ChunkedScanParams& p) {
  const ScanShape& s = p.shape;
  return {s.batch, s.tokens, s.heads, s.head_dim, s.groups, s.state_size, p.chunk_size,
          (s.tokens + p.chunk_size - 1) / p.chunk_size, p.xbc_token_stride};
}

// The workspace: four fp32 arrays, each 256-byte aligned.
struct Workspace {
  float* dt;      // [B, H, T] dt' after bias, softplus and the limit
  float* cum;     // [B, H, T] Σ dt' A inside each chunk
  float* cb;      // [B, G, chunks, Q, Q] C_t · B_s of each chunk (s <= t tiles only)
  float* states;  // [B, H, chunks, P, N] S_c, then (in place) S_in[c]
};

int64_t aligned(int64_t floats) { return (floats + 63) / 64 * 64; }

Workspace carve(const Geometry& g, void* base) {
  float* p = static_cast<float*>(base);
  Workspace w{};
  w.dt = p;
  p += aligned(g.B * g.H * g.T);
  w.cum = p;
  p += aligned(g.B * g.H * g.T);
  w.cb = p;
  p += aligned(g.B * g.G * g.chunks * g.Q * g.Q);
  w.states = p;
  return w;
}

// ---- 1. dt' and its cumulative sum inside each chunk -----------------------------------------

constexpr int kScanThreads = 256;

__global__ void chunk_cumsum_kernel(Geometry g, ChunkedScanParams p, Workspace w) {
  __shared__ float warp_totals[kScanThreads / 32];
  const int64_t bh = blockIdx.x, b = bh / g.H, h = bh % g.H, c = blockIdx.y;
  const int64_t t0 = c * g.Q, len = g.chunk_len(c);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float a_h = p.A[h], bias = p.dt_bias ? p.dt_bias[h] : 0.0f;
  MAMBADIFF_COVER(kChunkedTailChunk, threadIdx.x == 0 && len < g.Q);
  MAMBADIFF_COVER(kChunkedDtTransform, threadIdx.x == 0 && (p.dt_bias || p.dt_softplus));
  float carry = 0.0f;  // Σ dt' A of the chunk's earlier tokens (a fixed order: deterministic)
  for (int64_t base = 0; base < len; base += kScanThreads) {
    const int64_t t = base + threadIdx.x;
    float dtv = 0.0f;
    if (t < len) {
      dtv = p.dt[(b * g.T + t0 + t) * p.dt_token_stride + h] + bias;
      if (p.dt_softplus) dtv = dtv > 20.0f ? dtv : log1pf(expf(dtv));  // torch's softplus threshold
      // Comparisons, not fminf/fmaxf: a NaN dt stays NaN (and shows as a divergence).
      if (dtv < p.dt_min) dtv = p.dt_min;
      if (dtv > p.dt_max) dtv = p.dt_max;
    }
    float v = dtv * a_h;
    for (int offset = 1; offset < 32; offset *= 2) {  // inclusive scan inside the warp
      const float up = __shfl_up_sync(0xffffffffu, v, offset);
      if (lane >= offset) v += up;
    }
    if (lane == 31) warp_totals[warp] = v;
    __syncthreads();
    float before = carry;
    for (int i = 0; i < warp; ++i) before += warp_totals[i];
    float round_total = 0.0f;
    for (int i = 0; i < kScanThreads / 32; ++i) round_total += warp_totals[i];
    if (t < len) {
      const int64_t k = bh * g.T + t0 + t;
      w.dt[k] = dtv;
      w.cum[k] = before + v;
    }
    carry += round_total;
    __syncthreads();  // warp_totals is rewritten by the next round
  }
}

// ---- 2. C_t · B_s per group and chunk -----------------------------------------------------------

template <typename T>
__global__ void chunk_cb_kernel(Geometry g, ChunkedScanParams p, Workspace w) {
  const int64_t t_tile = blockIdx.y, s_tile = blockIdx.z;
  if (s_tile > t_tile) return;  // above the diagonal: never read (L is causal)
  const int64_t bgc = blockIdx.x, c = bgc % g.chunks, bg = bgc / g.chunks, grp = bg % g.G, b = bg / g.G;
  const int64_t t0 = c * g.Q, len = g.chunk_len(c);
  const int64_t t_base = t_tile * kTile, s_base = s_tile * kTile;
  if (t_base >= len) return;
  constexpr bool kSplit = !kExactInTf32<T>;
  const T* C = static_cast<const T*>(p.Cm);
  const T* Bm = static_cast<const T*>(p.Bm);
  __shared__ __align__(128) SharedTile smem;
  AccumulatorFor<T> acc;
  // A(t, n) = C_t[n], B(n, s) = B_s[n]: n fastest in both (coalesced).
  for (int64_t n0 = 0; n0 < g.N; n0 += kTileK) {
    acc.step<Layout::kRowMajor, Layout::kColMajor>(
        smem,
        [&](int m, int k) {
          const int64_t t = t_base + m, n = n0 + k;
          return (t < len && n < g.N) ? load(C, g.row(b, t0 + t) + grp * g.N + n) : 0.0f;
        },
        [&](int k, int col) {
          const int64_t s = s_base + col, n = n0 + k;
          return (s < len && n < g.N) ? load(Bm, g.row(b, t0 + s) + grp * g.N + n) : 0.0f;
        },
        kSplit, kSplit);
  }
  const float* tile = acc.store(smem);
  float* cb = w.cb + ((b * g.G + grp) * g.chunks + c) * g.Q * g.Q;
  for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
    const int64_t t = t_base + e / kTile, s = s_base + e % kTile;
    if (t < len && s < len) cb[t * g.Q + s] = tile[(e / kTile) * kLdM + e % kTile];
  }
}

// ---- 3. each chunk's own state contribution ---------------------------------------------------

template <typename T>
__global__ void chunk_state_kernel(Geometry g, ChunkedScanParams p, Workspace w) {
  const int64_t bhc = blockIdx.x, c = bhc % g.chunks, bh = bhc / g.chunks, h = bh % g.H, b = bh / g.H;
  const int64_t grp = h / g.heads_per_group(), t0 = c * g.Q, len = g.chunk_len(c);
  const int64_t p_base = int64_t(blockIdx.y) * kTile, n_base = int64_t(blockIdx.z) * kTile;
  constexpr bool kSplitInputs = !kExactInTf32<T>;
  const T* x = static_cast<const T*>(p.x);
  const T* Bm = static_cast<const T*>(p.Bm);
  __shared__ __align__(128) SharedTile smem;
  __shared__ float weight[kTileK];  // exp(cum_end - cum_s) dt'_s of the staged tokens
  const float* cum = w.cum + bh * g.T + t0;
  const float* dt = w.dt + bh * g.T + t0;
  const float cum_end = cum[len - 1];
  AccumulatorFor<T> acc;
  // A(p, s) = weight_s x_s[p] (p fastest: coalesced), B(s, n) = B_s[n] (n fastest).
  for (int64_t s0 = 0; s0 < len; s0 += kTileK) {
    // The previous step's fill is done reading `weight` (step() synchronizes before its MMAs).
    if (threadIdx.x < kTileK) {
      const int64_t s = s0 + threadIdx.x;
      weight[threadIdx.x] = s < len ? expf(cum_end - cum[s]) * dt[s] : 0.0f;
    }
    acc.step<Layout::kColMajor, Layout::kRowMajor>(
        smem,
        [&](int m, int k) {
          const int64_t pp = p_base + m, s = s0 + k;
          return (pp < g.P && s < len) ? weight[k] * load(x, g.row(b, t0 + s) + h * g.P + pp) : 0.0f;
        },
        [&](int k, int col) {
          const int64_t s = s0 + k, n = n_base + col;
          return (s < len && n < g.N) ? load(Bm, g.row(b, t0 + s) + grp * g.N + n) : 0.0f;
        },
        true, kSplitInputs);
  }
  const float* tile = acc.store(smem);
  float* out = w.states + (bh * g.chunks + c) * g.P * g.N;
  for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
    const int64_t pp = p_base + e / kTile, n = n_base + e % kTile;
    if (pp < g.P && n < g.N) out[pp * g.N + n] = tile[(e / kTile) * kLdM + e % kTile];
  }
}

// ---- 4. the state entering each chunk ---------------------------------------------------------

constexpr int kPassThreads = 256;

__global__ void state_passing_kernel(Geometry g, ChunkedScanParams p, Workspace w) {
  const int64_t bh = blockIdx.x, e = int64_t(blockIdx.y) * kPassThreads + threadIdx.x, PN = g.P * g.N;
  MAMBADIFF_COVER(kChunkedManyChunks, threadIdx.x == 0 && g.chunks > 1);
  if (e >= PN) return;
  float s = p.initial ? p.initial[bh * PN + e] : 0.0f;
  for (int64_t c = 0; c < g.chunks; ++c) {
    const float decay = expf(w.cum[bh * g.T + c * g.Q + g.chunk_len(c) - 1]);
    float* slot = w.states + (bh * g.chunks + c) * PN + e;
    const float own = *slot;
    *slot = s;
    s = decay * s + own;
  }
  p.final_state[bh * PN + e] = s;
}

// ---- 5. the output of each chunk --------------------------------------------------------------

template <typename T>
__global__ void chunk_output_kernel(Geometry g, ChunkedScanParams p, Workspace w) {
  const int64_t bhc = blockIdx.x, c = bhc % g.chunks, bh = bhc / g.chunks, h = bh % g.H, b = bh / g.H;
  const int64_t grp = h / g.heads_per_group(), t0 = c * g.Q, len = g.chunk_len(c);
  const int64_t t_base = int64_t(blockIdx.y) * kTile, p_base = int64_t(blockIdx.z) * kTile;
  if (t_base >= len) return;
  constexpr bool kSplitInputs = !kExactInTf32<T>;
  const T* x = static_cast<const T*>(p.x);
  const T* C = static_cast<const T*>(p.Cm);
  __shared__ __align__(128) SharedTile smem;
  __shared__ float decay_t[kTile];  // exp(cum_t) of the tile's tokens
  __shared__ float cum_t[kTile];    // cum of the tile's tokens
  __shared__ float cum_s[kTileK];   // cum and dt' of the staged tokens
  __shared__ float dt_s[kTileK];
  const float* cum = w.cum + bh * g.T + t0;
  const float* dt = w.dt + bh * g.T + t0;
  for (int i = threadIdx.x; i < kTile; i += kThreads) {
    cum_t[i] = t_base + i < len ? cum[t_base + i] : 0.0f;
    decay_t[i] = expf(cum_t[i]);
  }
  // (step() synchronizes before its fill reads cum_t.)
  const bool has_state_in = c > 0 || p.initial != nullptr;
  const float* state_in = w.states + (bh * g.chunks + c) * g.P * g.N;
  const float* cb = w.cb + ((b * g.G + grp) * g.chunks + c) * g.Q * g.Q;
  const int64_t s_end = len < t_base + kTile ? len : t_base + kTile;  // causal: later tokens never contribute
  AccumulatorFor<T> acc;
  // Inter-chunk: A(t, n) = exp(cum_t) C_t[n] (n fastest), B(n, p) = S_in[p][n] (n fastest).
  if (has_state_in) {
    for (int64_t n0 = 0; n0 < g.N; n0 += kTileK) {
      acc.step<Layout::kRowMajor, Layout::kColMajor>(
          smem,
          [&](int m, int k) {
            const int64_t t = t_base + m, n = n0 + k;
            return (t < len && n < g.N) ? decay_t[m] * load(C, g.row(b, t0 + t) + grp * g.N + n) : 0.0f;
          },
          [&](int k, int col) {
            const int64_t pp = p_base + col, n = n0 + k;
            return (pp < g.P && n < g.N) ? state_in[pp * g.N + n] : 0.0f;
          },
          true, true);
    }
  }
  // Intra-chunk: A(t, s) = L[t, s] = CB[t, s] exp(cum_t - cum_s) dt'_s for s <= t (s fastest),
  // B(s, p) = x_s[p] (p fastest).
  for (int64_t s0 = 0; s0 < s_end; s0 += kTileK) {
    if (threadIdx.x < kTileK) {
      const int64_t s = s0 + threadIdx.x;
      cum_s[threadIdx.x] = s < len ? cum[s] : 0.0f;
      dt_s[threadIdx.x] = s < len ? dt[s] : 0.0f;
    }
    acc.step<Layout::kRowMajor, Layout::kRowMajor>(
        smem,
        [&](int m, int k) {
          const int64_t t = t_base + m, s = s0 + k;
          return (t < len && s <= t) ? cb[t * g.Q + s] * expf(cum_t[m] - cum_s[k]) * dt_s[k] : 0.0f;
        },
        [&](int k, int col) {
          const int64_t s = s0 + k, pp = p_base + col;
          return (s < len && pp < g.P) ? load(x, g.row(b, t0 + s) + h * g.P + pp) : 0.0f;
        },
        true, kSplitInputs);
  }
  const float* tile = acc.store(smem);
  const float d_h = p.D ? p.D[h] : 0.0f;
  for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
    const int m = e / kTile, col = e % kTile;
    const int64_t t = t_base + m, pp = p_base + col;
    if (t >= len || pp >= g.P) continue;
    const float xv = load(x, g.row(b, t0 + t) + h * g.P + pp);
    p.y[((b * g.T + t0 + t) * g.H + h) * g.P + pp] = tile[m * kLdM + col] + d_h * xv;
  }
}

}  // namespace

size_t ssd_chunked_scan_workspace_bytes(const ScanShape& s, int64_t chunk_size) {
  if (chunk_size <= 0) return 0;
  const int64_t chunks = (s.tokens + chunk_size - 1) / chunk_size;
  const int64_t floats = aligned(s.batch * s.heads * s.tokens) * 2 +
                         aligned(s.batch * s.groups * chunks * chunk_size * chunk_size) +
                         aligned(s.batch * s.heads * chunks * s.head_dim * s.state_size);
  return static_cast<size_t>(floats) * sizeof(float);
}

int ssd_chunked_scan_forward(const ChunkedScanParams& p, void* workspace, void* stream_ptr) {
  const ScanShape& s = p.shape;
  if (p.chunk_size <= 0 || s.groups <= 0 || s.heads % s.groups != 0) return cudaErrorInvalidValue;
  if (s.batch * s.heads * s.head_dim * s.state_size == 0) return cudaSuccess;
  const Geometry g = geometry_of(p);
  const Workspace w = carve(g, workspace);
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const auto u = [](int64_t v) { return static_cast<unsigned>(v); };
  // Token tiles of one chunk (a chunk longer than the sequence has the sequence's length).
  const int64_t q_tiles = ((g.Q < g.T ? g.Q : g.T) + kTile - 1) / kTile;
  const unsigned p_tiles = u((g.P + kTile - 1) / kTile), n_tiles = u((g.N + kTile - 1) / kTile);
  if (g.chunks > 0) {
    chunk_cumsum_kernel<<<dim3(u(g.B * g.H), u(g.chunks)), kScanThreads, 0, stream>>>(g, p, w);
    MAMBADIFF_DISPATCH_ACT(p.act, (chunk_cb_kernel<T><<<dim3(u(g.B * g.G * g.chunks), u(q_tiles), u(q_tiles)),
                                                        kThreads, 0, stream>>>(g, p, w)));
    MAMBADIFF_DISPATCH_ACT(p.act, (chunk_state_kernel<T><<<dim3(u(g.B * g.H * g.chunks), p_tiles, n_tiles),
                                                           kThreads, 0, stream>>>(g, p, w)));
  }
  state_passing_kernel<<<dim3(u(g.B * g.H), u((g.P * g.N + kPassThreads - 1) / kPassThreads)), kPassThreads, 0,
                         stream>>>(g, p, w);
  if (g.chunks > 0) {
    MAMBADIFF_DISPATCH_ACT(p.act, (chunk_output_kernel<T><<<dim3(u(g.B * g.H * g.chunks), u(q_tiles), p_tiles),
                                                            kThreads, 0, stream>>>(g, p, w)));
  }
  return cudaGetLastError();
}

}  // namespace mambadiff::kernels

MAMBADIFF_COVERAGE_TAKER(take_ssd_chunked_scan)
