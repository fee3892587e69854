// ssd_chunked_scan: the selective scan of a prefill or continue (T > 1) in the chunked SSD form
// (Dao & Gu, "Transformers are SSMs", §6), five launches:
//
//   1. chunk_cumsum   per (b, h, chunk): dt' = clamp(softplus(dt + dt_bias), lo, hi) (each part
//                     optional) and the running sum cum_t = Σ_{s<=t} dt'_s A_h inside the chunk, in
//                     float64 (the decays are exp of differences of these sums; see Workspace).
//   2. chunk_cb       per (b, g, chunk, t-tile, s-tile <= t-tile): CB[t, s] = C_t · B_s.
//   3. chunk_state    per (b, h, chunk, p-tile, n-tile): the chunk's own state contribution
//                       S_c[p, n] = Σ_s exp(cum_end - cum_s) dt'_s x_s[p] B_s[n].
//   4. state_passing  per (b, h, p·n slice), sequential over chunks: S_in[c] = the state entering
//                     chunk c (initial state for c = 0); final = exp(cum_end) S_in + S_c of the last.
//   5. chunk_output   per (b, h, chunk, t-tile, p-tile):
//                       y_t = exp(cum_t) C_t · S_in[c] + Σ_{s<=t} CB[t, s] exp(cum_t - cum_s) dt'_s x_s + D x_t
//
// The products (C·Bᵀ, (w x)ᵀ·B, C·S and L·x) of bf16 runs run on tensor cores as TF32 MMAs (wmma
// m16n16k8, fp32 accumulation). Plain TF32 keeps 10 mantissa bits: mamba_ssm's fp32 path diverges
// from the float64 reference for exactly that reason (docs/external.md). So every operand that is
// not already exact in TF32 is split, a = hi + lo with hi = tf32(a), lo = tf32(a - hi), and a·b is
// taken as hi·hi + hi·lo + lo·hi ("3xTF32"): about 21 bits of each product. bf16 activations (x, B,
// C) are exact in TF32 (8 < 10 mantissa bits) and are not split; the computed operands
// (decay-weighted x, L, exp(cum) C, the states) always are. fp32 runs use fp32 FMAs instead
// (SimtAccumulator: 3xTF32 measured past the harness's fp32 budget over a 256-token chunk).
//
// Offsets are 64-bit across batches, heads and chunks (mamba_ssm #1015 overflowed 32-bit offsets
// past ~61K tokens) and 32-bit inside one chunk (the launcher refuses a chunk spanning 2^31
// elements). The chunk size is any positive number; the last chunk may be shorter (T % chunk != 0).
// Masked entries of L (s > t, or past the sequence) are zero, never exp of a positive difference
// (mamba_ssm PR #713).
#include <mma.h>

#include <cstdint>
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
constexpr int kThreads = 256;    // 8 warps as 2 x 4, each 32 x 16 of the tile (2 x 1 fragments)
#ifndef MAMBADIFF_SCAN_MIN_BLOCKS
#define MAMBADIFF_SCAN_MIN_BLOCKS 4  // measured on an H200: 12.6 ms at b8 L8192 h80 vs 13.1 (3), 14.7 (2), 33.6 (1)
#endif
// Resident blocks per SM the MMA kernels are compiled for (caps registers at 64K / (256 x this)).
constexpr int kMinBlocksPerSm = MAMBADIFF_SCAN_MIN_BLOCKS;
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

// Leading dimensions of a staged slice, in elements of the stage type. fp32: 4 floats of padding
// (kLdK, kLdM above). bf16: 8 elements of padding (16 bytes), which keeps every 16 x 16 fragment's
// start 32-byte aligned (16 * 40 * 2 and 16 * 72 * 2 bytes; k0 = 16 and n0 = 16k at 32 bytes) and
// the leading dimension a multiple of 8, as wmma requires of 16-bit types.
template <typename Stage>
struct StageLayout {
  static constexpr int kPad = std::is_same_v<Stage, __nv_bfloat16> ? 8 : 4;
  static constexpr int kLdK = kTileK + kPad, kLdM = kTile + kPad;
  template <Layout L>
  __host__ __device__ static constexpr int ld_a() { return L == Layout::kRowMajor ? kLdK : kLdM; }
  template <Layout L>
  __host__ __device__ static constexpr int ld_b() { return L == Layout::kRowMajor ? kLdM : kLdK; }
};
static_assert(StageLayout<float>::kLdK == kLdK && StageLayout<float>::kLdM == kLdM, "one fp32 layout");
static_assert(kTile * StageLayout<__nv_bfloat16>::kLdK * 2 <= kStageFloats * 4 &&
                  kTileK * StageLayout<__nv_bfloat16>::kLdM * 2 <= kStageFloats * 4,
              "a bf16 stage fits in a float stage");

// The stage of a step (a then b, as floats or bf16), and after the last step the accumulated tile
// (out, fp32, over both).
struct SharedTile {
  static constexpr int kFloats = 2 * kStageFloats > kTile * kLdM ? 2 * kStageFloats : kTile * kLdM;
  float mem[kFloats];
  template <typename Stage = float>
  __device__ Stage* a() { return reinterpret_cast<Stage*>(mem); }
  template <typename Stage = float>
  __device__ Stage* b() { return reinterpret_cast<Stage*>(mem + kStageFloats); }
};

// A run of 8 consecutive elements from global memory, as floats: `valid` of them are real (the
// rest, past the problem's edge, are 0). One 16-byte (bf16) or two 16-byte (fp32) loads when the
// run is whole and aligned; element by element otherwise (tails, odd strides of tiny models).
constexpr int kRun = 8;

__device__ __forceinline__ void load_run(const float* p, int valid, float (&out)[kRun]) {
  if (valid >= kRun && (reinterpret_cast<uintptr_t>(p) & 15) == 0) {
    const float4 lo = reinterpret_cast<const float4*>(p)[0], hi = reinterpret_cast<const float4*>(p)[1];
    out[0] = lo.x, out[1] = lo.y, out[2] = lo.z, out[3] = lo.w, out[4] = hi.x, out[5] = hi.y, out[6] = hi.z, out[7] = hi.w;
    return;
  }
#pragma unroll
  for (int r = 0; r < kRun; ++r) out[r] = r < valid ? p[r] : 0.0f;
}

__device__ __forceinline__ void load_run(const __nv_bfloat16* p, int valid, float (&out)[kRun]) {
  if (valid >= kRun && (reinterpret_cast<uintptr_t>(p) & 15) == 0) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
    for (int r = 0; r < kRun / 2; ++r) {
      const float2 f = __bfloat1622float2(pairs[r]);
      out[2 * r] = f.x, out[2 * r + 1] = f.y;
    }
    return;
  }
#pragma unroll
  for (int r = 0; r < kRun; ++r) out[r] = r < valid ? __bfloat162float(p[r]) : 0.0f;
}

// One slice of both operands held in registers: load() issues the global reads of the NEXT slice
// before the block multiplies the current one (software pipelining: the loads' latency hides
// behind the MMAs), commit() moves the slice to shared memory between two barriers.
//
// Each thread stages one run of kRun elements of each operand along the operand's contiguous
// (stored) dimension. The operand functors get (step, row, first, out): `row` indexes the operand
// as stored (A row-major: m; A col-major: k; B row-major: k; B col-major: n), out[r] is element
// first + r along the stored row.
template <Layout LA, Layout LB>
struct StagedSlice {
  static_assert(kTile * kTileK == kThreads * kRun, "one run of each operand per thread");
  // Stored row length (elements) and the thread's run in it, per layout.
  static constexpr int kRowLenA = LA == Layout::kRowMajor ? kTileK : kTile;
  static constexpr int kRowLenB = LB == Layout::kRowMajor ? kTile : kTileK;
  float a[kRun], b[kRun];

  template <class OperandA, class OperandB>
  __device__ void load(int64_t step, OperandA& a_of, OperandB& b_of) {
    constexpr int runs_a = kRowLenA / kRun, runs_b = kRowLenB / kRun;
    a_of(step, static_cast<int>(threadIdx.x) / runs_a, static_cast<int>(threadIdx.x) % runs_a * kRun, a);
    b_of(step, static_cast<int>(threadIdx.x) / runs_b, static_cast<int>(threadIdx.x) % runs_b * kRun, b);
  }

  // Stage = float: the runs as they are (fp32 FMAs, or TF32 MMAs that split them); Stage =
  // __nv_bfloat16: each value rounded once to bf16 (round to nearest even), one 16-byte store a run.
  template <typename Stage>
  __device__ void commit(SharedTile& smem) const {
    constexpr int runs_a = kRowLenA / kRun, runs_b = kRowLenB / kRun;
    constexpr int lda = StageLayout<Stage>::template ld_a<LA>(), ldb = StageLayout<Stage>::template ld_b<LB>();
    __syncthreads();  // the previous slice's multiply is done reading the stage
    store_run(&smem.a<Stage>()[(threadIdx.x / runs_a) * lda + threadIdx.x % runs_a * kRun], a);
    store_run(&smem.b<Stage>()[(threadIdx.x / runs_b) * ldb + threadIdx.x % runs_b * kRun], b);
    __syncthreads();
  }

 private:
  __device__ static void store_run(float* p, const float (&v)[kRun]) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
  __device__ static void store_run(__nv_bfloat16* p, const float (&v)[kRun]) {
    uint4 packed;
    __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&packed);
#pragma unroll
    for (int r = 0; r < kRun / 2; ++r) pairs[r] = __floats2bfloat162_rn(v[2 * r], v[2 * r + 1]);
    *reinterpret_cast<uint4*>(p) = packed;
  }
};

// acc += Σ_step A_step · B_step over `steps` slices of the reduction, pipelined as StagedSlice says.
// Every thread of the block calls it.
template <Layout LA, Layout LB, class Accumulator, class OperandA, class OperandB>
__device__ void accumulate(Accumulator& acc, SharedTile& smem, int64_t steps, OperandA a_of, OperandB b_of, bool split_a,
                           bool split_b) {
  if (steps <= 0) return;
  StagedSlice<LA, LB> slice;
  slice.load(0, a_of, b_of);
  for (int64_t step = 0; step < steps; ++step) {
    slice.template commit<typename Accumulator::Stage>(smem);
    if (step + 1 < steps) slice.load(step + 1, a_of, b_of);
    acc.template multiply<LA, LB>(smem, split_a, split_b);
  }
}

// The accumulated kTile x kTile tile of a block; multiply() adds the staged slice of A · B. Slices
// of different operand layouts may add into the same tile (the accumulator does not depend on them).
class TileAccumulator {
 public:
  using Stage = float;
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

  __device__ TileAccumulator() : warp_m_(threadIdx.x / 32 / 4), warp_n_(threadIdx.x / 32 % 4) {
    for (auto& row : acc_)
      for (auto& f : row) wmma::fill_fragment(f, 0.0f);
  }

  // acc += A · B of the slice staged in shared memory; split_a / split_b say whether an operand
  // needs the 3xTF32 split.
  template <Layout LA, Layout LB>
  __device__ void multiply(SharedTile& smem, bool split_a, bool split_b) {
    using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma_layout<LA>>;
    using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma_layout<LB>>;
    constexpr int lda = LA == Layout::kRowMajor ? kLdK : kLdM, ldb = LB == Layout::kRowMajor ? kLdM : kLdK;
    for (int k0 = 0; k0 < kTileK; k0 += 8) {
      FragA a_hi[2], a_lo[2];
      FragB b_hi[1], b_lo[1];
      for (int i = 0; i < 2; ++i) {
        const int m0 = warp_m_ * 32 + i * 16;
        wmma::load_matrix_sync(a_hi[i], LA == Layout::kRowMajor ? &smem.a()[m0 * kLdK + k0] : &smem.a()[k0 * kLdM + m0], lda);
        split(a_hi[i], a_lo[i], split_a);
      }
      for (int j = 0; j < 1; ++j) {
        const int n0 = warp_n_ * 16 + j * 16;
        wmma::load_matrix_sync(b_hi[j], LB == Layout::kRowMajor ? &smem.b()[k0 * kLdM + n0] : &smem.b()[n0 * kLdK + k0], ldb);
        split(b_hi[j], b_lo[j], split_b);
      }
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 1; ++j) {
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
      for (int j = 0; j < 1; ++j)
        wmma::store_matrix_sync(&out[(warp_m_ * 32 + i * 16) * kLdM + warp_n_ * 16 + j * 16], acc_[i][j], kLdM,
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
  FragC acc_[2][1];
};


// The same tile in plain fp32 FMAs (CUDA cores), for fp32 activations: 3xTF32 keeps ~22 bits of
// each product, and over a 256-token reduction that measured 2e-6 of the output's scale against the
// float64 reference — past the fp32 budget (4 x the sequential fp32 kernel's 1e-7, + 1e-6) that the
// harness gives a path. Thread (tm, tn) owns rows 4 tm … 4 tm + 3 and columns 4 tn … 4 tn + 3;
// every output is one fixed-order fp32 sum (deterministic).
class SimtAccumulator {
 public:
  using Stage = float;
  __device__ SimtAccumulator() : tm_(threadIdx.x / 16), tn_(threadIdx.x % 16) {
    for (auto& row : acc_)
      for (float& v : row) v = 0.0f;
  }

  template <Layout LA, Layout LB>
  __device__ void multiply(SharedTile& smem, bool /*split_a*/, bool /*split_b*/) {
    for (int k = 0; k < kTileK; ++k) {
      float av[4], bv[4];
      for (int i = 0; i < 4; ++i) {
        const int m = tm_ * 4 + i;
        av[i] = LA == Layout::kRowMajor ? smem.a()[m * kLdK + k] : smem.a()[k * kLdM + m];
      }
      for (int j = 0; j < 4; ++j) {
        const int n = tn_ * 4 + j;
        bv[j] = LB == Layout::kRowMajor ? smem.b()[k * kLdM + n] : smem.b()[n * kLdK + k];
      }
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc_[i][j] = fmaf(av[i], bv[j], acc_[i][j]);
    }
  }

  __device__ const float* store(SharedTile& smem) {
    float* out = smem.mem;
    __syncthreads();  // the last step is done reading the stage
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) out[(tm_ * 4 + i) * kLdM + tn_ * 4 + j] = acc_[i][j];
    __syncthreads();
    return out;
  }

 private:
  int tm_, tn_;
  float acc_[4][4];
};

// The same tile on bf16 tensor cores (wmma m16n16k16, fp32 accumulation), for bf16 activations
// when ChunkedScanParams::bf16_products asks for it: every operand is staged as bf16, so a computed
// operand (decay-weighted x, L, exp(cum) C, the entering state) is rounded ONCE to bf16 — what
// mamba_ssm's and vLLM's Triton kernels do (their tl.dot takes operands in the input dtype). The
// activations themselves (x, B, C) are bf16 already and stay exact; every product is exact in the
// fp32 accumulator. One MMA a product where the split TF32 tile needs 2-3, at twice TF32's rate, and
// half the shared memory traffic (b8 L8192 h80 on an H200: 12.8 -> 5.9 ms). Error: up to 2^-8
// relative per computed operand (bf16's unit roundoff); kernels/check/ holds the scan to the
// element-wise bound that implies, and `check` the whole model to the harness's bf16 tolerance.
// (Double-buffering the half-size bf16 stage, one barrier a slice instead of two, measured 6%
// slower on the same card: 6.29 vs 5.95 ms; not kept.)
class Bf16TileAccumulator {
 public:
  using Stage = __nv_bfloat16;
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

  __device__ Bf16TileAccumulator() : warp_m_(threadIdx.x / 32 / 4), warp_n_(threadIdx.x / 32 % 4) {
    for (auto& f : acc_) wmma::fill_fragment(f, 0.0f);
  }

  template <Layout LA, Layout LB>
  __device__ void multiply(SharedTile& smem, bool /*split_a*/, bool /*split_b*/) {
    using Ld = StageLayout<Stage>;
    using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma_layout<LA>>;
    using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma_layout<LB>>;
    constexpr int lda = Ld::template ld_a<LA>(), ldb = Ld::template ld_b<LB>();
    const Stage* a = smem.a<Stage>();
    const Stage* b = smem.b<Stage>();
#pragma unroll
    for (int k0 = 0; k0 < kTileK; k0 += 16) {
      FragB fb;
      const int n0 = warp_n_ * 16;
      wmma::load_matrix_sync(fb, LB == Layout::kRowMajor ? &b[k0 * ldb + n0] : &b[n0 * ldb + k0], ldb);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        FragA fa;
        const int m0 = warp_m_ * 32 + i * 16;
        wmma::load_matrix_sync(fa, LA == Layout::kRowMajor ? &a[m0 * lda + k0] : &a[k0 * lda + m0], lda);
        wmma::mma_sync(acc_[i], fa, fb, acc_[i]);
      }
    }
  }

  __device__ const float* store(SharedTile& smem) {
    float* out = smem.mem;
    __syncthreads();  // the last step's MMAs are done reading the stage
    for (int i = 0; i < 2; ++i)
      wmma::store_matrix_sync(&out[(warp_m_ * 32 + i * 16) * kLdM + warp_n_ * 16], acc_[i], kLdM, wmma::mem_row_major);
    __syncthreads();
    return out;
  }

 private:
  int warp_m_, warp_n_;
  FragC acc_[2];
};

// The accumulator of a run: fp32 activations take fp32 FMAs; bf16 activations take TF32 tensor
// cores with split operands, or bf16 tensor cores with operands rounded once (kBf16Products).
template <typename T, bool kBf16Products>
using AccumulatorFor =
    std::conditional_t<!kExactInTf32<T>, SimtAccumulator,
                       std::conditional_t<kBf16Products, Bf16TileAccumulator, TileAccumulator>>;

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

// The workspace: four arrays, each 256-byte aligned.
struct Workspace {
  float* dt;      // [B, H, T] dt' after bias, softplus and the limit
  // [B, H, T] Σ dt' A inside each chunk, in float64: the decays are exp(cum_t - cum_s), and after one
  // huge dt' A (dt = 1e4 in scan_diff's corpus: cum ~ -5e5, where fp32's spacing is 0.03) the fp32
  // difference of two such sums lost 5% to cancellation. float64 keeps it to ~1e-10.
  double* cum;
  float* cb;      // [B, G, chunks, Q, Q] C_t · B_s of each chunk (s <= t tiles only)
  float* states;  // [B, H, chunks, P, N] S_c, then (in place) S_in[c]
};

int64_t aligned(int64_t floats) { return (floats + 63) / 64 * 64; }

Workspace carve(const Geometry& g, void* base) {
  float* p = static_cast<float*>(base);
  Workspace w{};
  w.dt = p;
  p += aligned(g.B * g.H * g.T);
  w.cum = reinterpret_cast<double*>(p);
  p += 2 * aligned(g.B * g.H * g.T);
  w.cb = p;
  p += aligned(g.B * g.G * g.chunks * g.Q * g.Q);
  w.states = p;
  return w;
}

// ---- 1. dt' and its cumulative sum inside each chunk -----------------------------------------

constexpr int kScanThreads = 256;

__global__ void chunk_cumsum_kernel(Geometry g, ChunkedScanParams p, Workspace w) {
  __shared__ double warp_totals[kScanThreads / 32];
  const int64_t bh = blockIdx.x, b = bh / g.H, h = bh % g.H, c = blockIdx.y;
  const int64_t t0 = c * g.Q, len = g.chunk_len(c);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float a_h = p.A[h], bias = p.dt_bias ? p.dt_bias[h] : 0.0f;
  MAMBADIFF_COVER(kChunkedTailChunk, threadIdx.x == 0 && len < g.Q);
  MAMBADIFF_COVER(kChunkedDtTransform, threadIdx.x == 0 && (p.dt_bias || p.dt_softplus));
  double carry = 0.0;  // Σ dt' A of the chunk's earlier tokens (a fixed order: deterministic)
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
    double v = static_cast<double>(dtv) * a_h;
    for (int offset = 1; offset < 32; offset *= 2) {  // inclusive scan inside the warp
      const double up = __shfl_up_sync(0xffffffffu, v, offset);
      if (lane >= offset) v += up;
    }
    if (lane == 31) warp_totals[warp] = v;
    __syncthreads();
    double before = carry;
    for (int i = 0; i < warp; ++i) before += warp_totals[i];
    double round_total = 0.0;
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

template <typename T, bool kBf16Products>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) chunk_cb_kernel(Geometry g, ChunkedScanParams p, Workspace w) {
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
  AccumulatorFor<T, kBf16Products> acc;
  // A(t, n) = C_t[n], B(n, s) = B_s[n]: n fastest in both (coalesced). Slices of kTileK state entries.
  // 64-bit bases of the chunk's rows, 32-bit offsets inside it (the launcher checks they fit).
  const T* C_rows = C + g.row(b, t0) + grp * g.N;
  const T* B_rows = Bm + g.row(b, t0) + grp * g.N;
  const int ld = static_cast<int>(g.xbc_stride), N = static_cast<int>(g.N), L = static_cast<int>(len);
  const int tb = static_cast<int>(t_base), sb = static_cast<int>(s_base);
  accumulate<Layout::kRowMajor, Layout::kColMajor>(
      acc, smem, (g.N + kTileK - 1) / kTileK,
      [&](int64_t step, int m, int k0, float(&out)[kRun]) {  // C[t][n0 + k0 ...]
        const int t = tb + m, n = static_cast<int>(step) * kTileK + k0;
        load_run(C_rows + t * ld + n, t < L ? N - n : 0, out);
      },
      [&](int64_t step, int col, int k0, float(&out)[kRun]) {  // B[s][n0 + k0 ...]
        const int s = sb + col, n = static_cast<int>(step) * kTileK + k0;
        load_run(B_rows + s * ld + n, s < L ? N - n : 0, out);
      },
      kSplit, kSplit);
  const float* tile = acc.store(smem);
  float* cb = w.cb + ((b * g.G + grp) * g.chunks + c) * g.Q * g.Q;
  for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
    const int64_t t = t_base + e / kTile, s = s_base + e % kTile;
    if (t < len && s < len) cb[t * g.Q + s] = tile[(e / kTile) * kLdM + e % kTile];
  }
}

// ---- 3. each chunk's own state contribution ---------------------------------------------------

template <typename T, bool kBf16Products>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) chunk_state_kernel(Geometry g, ChunkedScanParams p, Workspace w) {
  const int64_t bhc = blockIdx.x, c = bhc % g.chunks, bh = bhc / g.chunks, h = bh % g.H, b = bh / g.H;
  const int64_t grp = h / g.heads_per_group(), t0 = c * g.Q, len = g.chunk_len(c);
  const int64_t p_base = int64_t(blockIdx.y) * kTile, n_base = int64_t(blockIdx.z) * kTile;
  constexpr bool kSplitInputs = !kExactInTf32<T>;
  const T* x = static_cast<const T*>(p.x);
  const T* Bm = static_cast<const T*>(p.Bm);
  __shared__ __align__(128) SharedTile smem;
  const double* cum = w.cum + bh * g.T + t0;
  const float* dt = w.dt + bh * g.T + t0;
  const double cum_end = cum[len - 1];
  AccumulatorFor<T, kBf16Products> acc;
  // A(p, s) = exp(cum_end - cum_s) dt'_s x_s[p] (p fastest: coalesced), B(s, n) = B_s[n] (n fastest).
  // Slices of kTileK tokens.
  // 64-bit bases of the chunk's rows, 32-bit offsets inside it (the launcher checks they fit).
  const T* x_rows = x + g.row(b, t0) + h * g.P + p_base;
  const T* B_rows = Bm + g.row(b, t0) + grp * g.N + n_base;
  const int ld = static_cast<int>(g.xbc_stride), L = static_cast<int>(len);
  const int P_left = static_cast<int>(g.P - p_base), N_left = static_cast<int>(g.N - n_base);
  accumulate<Layout::kColMajor, Layout::kRowMajor>(
      acc, smem, (len + kTileK - 1) / kTileK,
      [&](int64_t step, int k, int m0, float(&out)[kRun]) {  // weight_s x[s][p0 + m0 ...]
        const int s = static_cast<int>(step) * kTileK + k;
        load_run(x_rows + s * ld + m0, s < L ? P_left - m0 : 0, out);
        const float weight = s < L ? expf(static_cast<float>(cum_end - cum[s])) * dt[s] : 0.0f;
#pragma unroll
        for (float& v : out) v *= weight;
      },
      [&](int64_t step, int k, int n0, float(&out)[kRun]) {  // B[s][n_base + n0 ...]
        const int s = static_cast<int>(step) * kTileK + k;
        load_run(B_rows + s * ld + n0, s < L ? N_left - n0 : 0, out);
      },
      true, kSplitInputs);
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
  // The chain is s's FMAs; the chunks' own states are loaded kAhead chunks early (the in-place
  // write of each slot keeps the compiler from hoisting the loads itself).
  constexpr int kAhead = 4;
  float own[kAhead];
  const auto slot = [&](int64_t c) { return w.states + (bh * g.chunks + c) * PN + e; };
  for (int i = 0; i < kAhead; ++i) own[i] = i < g.chunks ? *slot(i) : 0.0f;
  for (int64_t c = 0; c < g.chunks; ++c) {
    const float decay = expf(static_cast<float>(w.cum[bh * g.T + c * g.Q + g.chunk_len(c) - 1]));
    const float own_c = own[c % kAhead];
    if (c + kAhead < g.chunks) own[c % kAhead] = *slot(c + kAhead);
    *slot(c) = s;
    s = decay * s + own_c;
  }
  p.final_state[bh * PN + e] = s;
}

// ---- 5. the output of each chunk --------------------------------------------------------------

template <typename T, bool kBf16Products>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) chunk_output_kernel(Geometry g, ChunkedScanParams p, Workspace w) {
  const int64_t bhc = blockIdx.x, c = bhc % g.chunks, bh = bhc / g.chunks, h = bh % g.H, b = bh / g.H;
  const int64_t grp = h / g.heads_per_group(), t0 = c * g.Q, len = g.chunk_len(c);
  const int64_t t_base = int64_t(blockIdx.y) * kTile, p_base = int64_t(blockIdx.z) * kTile;
  if (t_base >= len) return;
  constexpr bool kSplitInputs = !kExactInTf32<T>;
  const T* x = static_cast<const T*>(p.x);
  const T* C = static_cast<const T*>(p.Cm);
  __shared__ __align__(128) SharedTile smem;
  __shared__ float decay_t[kTile];  // exp(cum_t) of the tile's tokens
  __shared__ double cum_t[kTile];   // cum of the tile's tokens
  // cum and dt' of the tokens s the tile's rows reach (s < s_end), read by every row of L: staged
  // once per block when they fit (chunks up to kStagedTokens, the checkpoints' 256), else read from
  // the workspace as they are needed. (Measured on an H200 against reading them from the workspace
  // with the accurate expf: 5.885 vs 5.900 ms at b8 L8192 h80 — no gain; kept because this is the
  // version the GPU tests, compute-sanitizer and `check` ran on, 2026-12-02 09:16 UTC.)
  constexpr int kStagedTokens = 256;
  __shared__ double cum_staged[kStagedTokens];
  __shared__ float dt_staged[kStagedTokens];
  const int64_t s_end = len < t_base + kTile ? len : t_base + kTile;  // causal: later tokens never contribute
  const double* cum = w.cum + bh * g.T + t0;
  const float* dt = w.dt + bh * g.T + t0;
  const bool staged = s_end <= kStagedTokens;
  for (int i = threadIdx.x; i < kTile; i += kThreads) {
    cum_t[i] = t_base + i < len ? cum[t_base + i] : 0.0;
    decay_t[i] = expf(static_cast<float>(cum_t[i]));
  }
  if (staged) {
    for (int i = threadIdx.x; i < s_end; i += kThreads) {
      cum_staged[i] = cum[i];
      dt_staged[i] = dt[i];
    }
  }
  __syncthreads();  // cum_t, decay_t and the staged tokens are read by every thread's first slice
  const double* cum_s = staged ? cum_staged : cum;
  const float* dt_s = staged ? dt_staged : dt;
  const bool has_state_in = c > 0 || p.initial != nullptr;
  const float* state_in = w.states + (bh * g.chunks + c) * g.P * g.N;
  const float* cb = w.cb + ((b * g.G + grp) * g.chunks + c) * g.Q * g.Q;
  AccumulatorFor<T, kBf16Products> acc;
  // Inter-chunk: A(t, n) = exp(cum_t) C_t[n] (n fastest), B(n, p) = S_in[p][n] (n fastest); slices
  // of kTileK state entries.
  // 64-bit bases of the chunk's rows, 32-bit offsets inside it (the launcher checks they fit).
  const T* C_rows = C + g.row(b, t0 + t_base) + grp * g.N;
  const T* x_rows = x + g.row(b, t0) + h * g.P + p_base;
  const float* state_rows = state_in + p_base * g.N;
  const float* cb_rows = cb + t_base * g.Q;
  const int ld = static_cast<int>(g.xbc_stride), N = static_cast<int>(g.N), Q = static_cast<int>(g.Q);
  const int T_left = static_cast<int>(len - t_base), P_left = static_cast<int>(g.P - p_base);
  const int tb = static_cast<int>(t_base), L = static_cast<int>(len);
  if (has_state_in) {
    accumulate<Layout::kRowMajor, Layout::kColMajor>(
        acc, smem, (g.N + kTileK - 1) / kTileK,
        [&](int64_t step, int m, int k0, float(&out)[kRun]) {  // exp(cum_t) C[t][n ...]
          const int n = static_cast<int>(step) * kTileK + k0;
          load_run(C_rows + m * ld + n, m < T_left ? N - n : 0, out);
#pragma unroll
          for (float& v : out) v *= decay_t[m];
        },
        [&](int64_t step, int col, int k0, float(&out)[kRun]) {  // S_in[p][n ...]
          const int n = static_cast<int>(step) * kTileK + k0;
          load_run(state_rows + col * N + n, col < P_left ? N - n : 0, out);
        },
        true, true);
  }
  // Intra-chunk: A(t, s) = L[t, s] = CB[t, s] exp(cum_t - cum_s) dt'_s for s <= t (s fastest),
  // B(s, p) = x_s[p] (p fastest); slices of kTileK tokens.
  accumulate<Layout::kRowMajor, Layout::kRowMajor>(
      acc, smem, (s_end + kTileK - 1) / kTileK,
      [&](int64_t step, int m, int k0, float(&out)[kRun]) {  // L[t][s ...], zero past s = t
        const int s = static_cast<int>(step) * kTileK + k0;
        const int valid = m < T_left ? tb + m + 1 - s : 0;  // s <= t (< len)
        load_run(cb_rows + m * Q + s, valid, out);
        const double cum_row = cum_t[m];
#pragma unroll
        for (int r = 0; r < kRun; ++r) {
          // bf16 products round L to bf16 (2^-8): the fast exp's ~2^-21 (plus |x| 2^-24 for large
          // arguments) disappears in that rounding; split TF32 keeps the accurate one.
          const float x = static_cast<float>(cum_row - cum_s[s + r]);
          const float decay = kBf16Products ? __expf(x) : expf(x);
          out[r] = r < valid ? out[r] * decay * dt_s[s + r] : 0.0f;
        }
      },
      [&](int64_t step, int k, int n0, float(&out)[kRun]) {  // x[s][p_base + n0 ...]
        const int s = static_cast<int>(step) * kTileK + k;
        load_run(x_rows + s * ld + n0, s < L ? P_left - n0 : 0, out);
      },
      true, kSplitInputs);
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
  const int64_t floats = aligned(s.batch * s.heads * s.tokens) * 3 +  // dt' (fp32) and cum (fp64)
                         aligned(s.batch * s.groups * chunks * chunk_size * chunk_size) +
                         aligned(s.batch * s.heads * chunks * s.head_dim * s.state_size);
  return static_cast<size_t>(floats) * sizeof(float);
}

int ssd_chunked_scan_forward(const ChunkedScanParams& p, void* workspace, void* stream_ptr) {
  const ScanShape& s = p.shape;
  if (p.chunk_size <= 0 || s.groups <= 0 || s.heads % s.groups != 0) return cudaErrorInvalidValue;
  if (s.batch * s.heads * s.head_dim * s.state_size == 0) return cudaSuccess;
  // Offsets inside one chunk are 32-bit (cheaper addressing in the staging loops); across chunks,
  // batches and heads they are 64-bit. A chunk whose rows, CB block or state span 2^31 elements
  // is refused (chunk 256 allows rows of 8M elements).
  const int64_t q_eff = p.chunk_size < s.tokens ? p.chunk_size : s.tokens;
  if (q_eff * p.xbc_token_stride >= (int64_t(1) << 31) || q_eff * q_eff >= (int64_t(1) << 31) ||
      s.head_dim * s.state_size >= (int64_t(1) << 31))
    return cudaErrorInvalidValue;
  const Geometry g = geometry_of(p);
  const Workspace w = carve(g, workspace);
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const auto u = [](int64_t v) { return static_cast<unsigned>(v); };
  // Token tiles of one chunk (a chunk longer than the sequence has the sequence's length).
  const int64_t q_tiles = ((g.Q < g.T ? g.Q : g.T) + kTile - 1) / kTile;
  const unsigned p_tiles = u((g.P + kTile - 1) / kTile), n_tiles = u((g.N + kTile - 1) / kTile);
  const dim3 cb_grid(u(g.B * g.G * g.chunks), u(q_tiles), u(q_tiles));
  const dim3 state_grid(u(g.B * g.H * g.chunks), p_tiles, n_tiles);
  const dim3 output_grid(u(g.B * g.H * g.chunks), u(q_tiles), p_tiles);
  // The three MMA kernels of one run, for the activation type and product precision (stage 2, 3 or 5).
  const auto launch_mma = [&](auto act_tag, auto bf16_products, int stage) {
    using T = decltype(act_tag);
    constexpr bool kBf16 = decltype(bf16_products)::value;
    if (stage == 2) chunk_cb_kernel<T, kBf16><<<cb_grid, kThreads, 0, stream>>>(g, p, w);
    if (stage == 3) chunk_state_kernel<T, kBf16><<<state_grid, kThreads, 0, stream>>>(g, p, w);
    if (stage == 5) chunk_output_kernel<T, kBf16><<<output_grid, kThreads, 0, stream>>>(g, p, w);
  };
  const auto launch = [&](int stage) {
    if (stage > p.stages) return;
    if (stage == 1) {
      chunk_cumsum_kernel<<<dim3(u(g.B * g.H), u(g.chunks)), kScanThreads, 0, stream>>>(g, p, w);
    } else if (stage == 4) {
      state_passing_kernel<<<dim3(u(g.B * g.H), u((g.P * g.N + kPassThreads - 1) / kPassThreads)), kPassThreads, 0,
                             stream>>>(g, p, w);
    } else if (p.act == Act::kFloat32) {
      launch_mma(float{}, std::false_type{}, stage);
    } else if (p.bf16_products) {
      launch_mma(__nv_bfloat16{}, std::true_type{}, stage);
    } else {
      launch_mma(__nv_bfloat16{}, std::false_type{}, stage);
    }
  };
  for (int stage = 1; stage <= 5; ++stage) {
    if (stage != 4 && g.chunks == 0) continue;  // no tokens: the state passes through (stage 4) alone
    launch(stage);
  }
  return cudaGetLastError();
}

}  // namespace mambadiff::kernels

MAMBADIFF_COVERAGE_TAKER(take_ssd_chunked_scan)
