// The closed-form Hessian's layer sum, fused: an XLA FFI handler for the CPU.
//
//   out[b, k] = base[b, k] + Σ_l G_l[:, b]ᵀ diag(c_l[b, k]) G_l[:, b]      (n_in × n_in)
//
// with G_l (h_l, B, n_in) the deep layers' pre-activation Jacobians, units first, c_l
// (B, n_out, h_l), and base (B, n_out, n_in (n_in + 1) / 2) the packed upper triangle of layer
// 1's term (one GEMM in XLA). XLA writes the scaled operand c ⊙ G to memory before its GEMM and
// multiplies the full square; here each example's G is copied once into a panel of units that
// stays in L2, for all its outputs; the scaled columns c_k ⊙ G of two outputs at a time go to an
// L2 buffer beside it; register-blocked outer-product tiles broadcast G[i, a] once for both
// outputs and compute only the W × W blocks on or above the diagonal; each result is written
// whole, its lower half mirrored from the upper by in-register transposes.
//
// Portable C++17 with GCC's vector extensions. setup.py compiles this one source several times,
// once for each ISA level (the portable baseline, and on x86-64 also x86-64-v3 and x86-64-v4),
// into modules that differ only in their instructions: jaxjac/_hessian_kernel.py asks
// JaxjacCpuSupports of the baseline build which of them this CPU runs before it loads any other.
// A module is never loaded on a CPU it was not compiled for, so even its load-time code may use
// the wide instructions. Each build's vectors are one register of its ISA (16 bytes for SSE2 and
// NEON, 32 for AVX2, 64 for AVX-512) and its tiles as tall as its registers allow; Python reads
// the width back (JaxjacVectorBytes) for its scratch estimate. Work is shared with XLA's own
// intra-op thread pool, one example (or a range of outputs of one) at a time.
//
// Scratch comes from the heap of XLA's threads, where an exception would abort the process: it
// is allocated without throwing, and a worker whose scratch is refused, or would exceed the
// caller's limit, computes its items by a path that needs none (Direct), with the same result.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// The vector width and register count of the ISA the build targets: the tiles below keep their
// accumulators in registers, and 64-byte vectors on a 16-register ISA would spill them.
#ifndef JAXJAC_VECTOR_BYTES
#if defined(__AVX512F__)
#define JAXJAC_VECTOR_BYTES 64
#define JAXJAC_VECTOR_REGISTERS 32
#elif defined(__AVX__)
#define JAXJAC_VECTOR_BYTES 32
#define JAXJAC_VECTOR_REGISTERS 16
#elif defined(__aarch64__)
#define JAXJAC_VECTOR_BYTES 16
#define JAXJAC_VECTOR_REGISTERS 32
#else
#define JAXJAC_VECTOR_BYTES 16
#define JAXJAC_VECTOR_REGISTERS 16
#endif
#endif
#ifndef JAXJAC_VECTOR_REGISTERS
#define JAXJAC_VECTOR_REGISTERS 16
#endif

namespace {

constexpr int64_t kVectorBytes = JAXJAC_VECTOR_BYTES;
static_assert(kVectorBytes >= 16 && (kVectorBytes & (kVectorBytes - 1)) == 0,
              "JAXJAC_VECTOR_BYTES: a power of two of at least 16");

template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float vec __attribute__((vector_size(kVectorBytes)));
  typedef int32_t index __attribute__((vector_size(kVectorBytes)));
  static constexpr int64_t kWidth = kVectorBytes / 4;
};
template <>
struct Lanes<double> {
  typedef double vec __attribute__((vector_size(kVectorBytes)));
  typedef int64_t index __attribute__((vector_size(kVectorBytes)));
  static constexpr int64_t kWidth = kVectorBytes / 8;
};

// Transposes the W × W block held in v[0 … W) (one row a vector): at each level s, rows r and
// r + s swap their off-diagonal s × s sub-blocks.
template <typename T>
inline void Transpose(typename Lanes<T>::vec* v) {
  using vec = typename Lanes<T>::vec;
  using index = typename Lanes<T>::index;
  constexpr int64_t W = Lanes<T>::kWidth;
#pragma GCC unroll 4
  for (int64_t s = W / 2; s >= 1; s /= 2) {
    index lo, hi;
#pragma GCC unroll 16
    for (int64_t j = 0; j < W; ++j) {
      const bool left = (j / s) % 2 == 0;
      lo[j] = left ? j : W + j - s;
      hi[j] = left ? j + s : W + j;
    }
#pragma GCC unroll 16
    for (int64_t r = 0; r < W; ++r) {
      if ((r / s) % 2 != 0) continue;
      const vec x = __builtin_shuffle(v[r], v[r + s], lo);
      const vec y = __builtin_shuffle(v[r], v[r + s], hi);
      v[r] = x;
      v[r + s] = y;
    }
  }
}

// Column groups of two vectors (kGroup = 2W numbers). For one panel of n units:
//   ga (n, d)               G itself, one unit a row: the tiles broadcast its entries;
//   gb (groups, n, kGroup)  the group's columns of c_k ⊙ G for each output k of a pair,
//                           kstride numbers apart.
// A tile of R rows, V column vectors and K outputs adds Σ_i c_{k,i} G[i, a] G[i, col …] into
// S_k (ld numbers a row, sstride numbers apart): each broadcast of G[i, a] serves K outputs, so
// two outputs at a time halve the broadcasts per multiply-add.
template <typename T, int R, int V, int K>
__attribute__((always_inline)) inline void Tile(const T* ga, int64_t lda, const T* gb,
                                                int64_t kstride, int64_t n, int64_t a0,
                                                int64_t col, bool accumulate, T* s,
                                                int64_t sstride, int64_t ld) {
  using vec = typename Lanes<T>::vec;
  constexpr int64_t W = Lanes<T>::kWidth;
  constexpr int64_t kGroup = 2 * W;
  vec acc[K][R][V];
#pragma GCC unroll 2
  for (int k = 0; k < K; ++k)
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) {
        if (accumulate)
          std::memcpy(&acc[k][r][v], s + k * sstride + (a0 + r) * ld + col + v * W, sizeof(vec));
        else
          acc[k][r][v] = vec{};
      }
  const T* bi = gb;
  const T* ai = ga + a0;
  for (int64_t i = 0; i < n; ++i, bi += kGroup, ai += lda) {
    vec b[K][V];
#pragma GCC unroll 2
    for (int k = 0; k < K; ++k)
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) std::memcpy(&b[k][v], bi + k * kstride + v * W, sizeof(vec));
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vec a = vec{} + ai[r];
#pragma GCC unroll 2
      for (int k = 0; k < K; ++k)
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) acc[k][r][v] += a * b[k][v];
    }
  }
#pragma GCC unroll 2
  for (int k = 0; k < K; ++k)
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v)
        std::memcpy(s + k * sstride + (a0 + r) * ld + col + v * W, &acc[k][r][v], sizeof(vec));
}

// Rows a tile: about 24 accumulators (K · R · V) and the rest of 32 vector registers for the
// column vectors and a broadcast; about 12 where there are 16 (the column vectors then come
// from memory as FMA operands).
template <int V, int K>
constexpr int kRows = JAXJAC_VECTOR_REGISTERS >= 32 ? (V * K == 4 ? 6 : V * K == 2 ? 12 : 16)
                                                    : (V * K == 4 ? 3 : V * K == 2 ? 6 : 12);

template <typename T, int V, int K, int R = kRows<V, K>>
inline void TileRows(int rows, const T* ga, int64_t lda, const T* gb, int64_t kstride,
                     int64_t n, int64_t a0, int64_t col, bool accumulate, T* s, int64_t sstride,
                     int64_t ld) {
  if constexpr (R > 0) {
    if (rows == R)
      return Tile<T, R, V, K>(ga, lda, gb, kstride, n, a0, col, accumulate, s, sstride, ld);
    return TileRows<T, V, K, R - 1>(rows, ga, lda, gb, kstride, n, a0, col, accumulate, s,
                                    sstride, ld);
  }
}

// S_k[a, c] += Σ_i c_{k,i} G[i, a] G[i, c] for every a ≤ c < d (and some a > c near the
// diagonal), for K outputs.
template <typename T, int K>
inline void UpperTriangle(const T* ga, const T* gb, int64_t kstride, int64_t n, int64_t d,
                          bool accumulate, T* s, int64_t sstride, int64_t ld) {
  constexpr int64_t W = Lanes<T>::kWidth;
  for (int64_t c0 = 0, q = 0; c0 < d; c0 += 2 * W, ++q) {
    const T* gq = gb + q * n * 2 * W;
    const int64_t vectors = std::min<int64_t>(2, (d - c0 + W - 1) / W);
    for (int64_t v = 0; v < vectors; ++v) {
      // Rows a < c0 + W take the whole group; each later vector's own rows take it alone.
      const int64_t lo = v == 0 ? 0 : c0 + v * W, hi = std::min(d, c0 + (v + 1) * W);
      const int64_t width = vectors - v;
      // As few tiles as the registers allow, of as equal heights as can be.
      const int64_t most = width == 2 ? kRows<2, K> : kRows<1, K>;
      const int64_t tiles = (hi - lo + most - 1) / most;
      for (int64_t t = 0, a0 = lo; t < tiles; ++t) {
        const int r = static_cast<int>((hi - lo) * (t + 1) / tiles - (a0 - lo));
        if (width == 2)
          TileRows<T, 2, K>(r, ga, d, gq, kstride, n, a0, c0, accumulate, s, sstride, ld);
        else
          TileRows<T, 1, K>(r, ga, d, gq + v * W, kstride, n, a0, c0 + v * W, accumulate, s,
                            sstride, ld);
        a0 += r;
      }
    }
  }
}

// out (d, d) = S + base on and above the diagonal, mirrored below it. S holds every W × W block
// on or above the diagonal whole; base is the packed upper triangle (row a: columns a … d-1).
template <typename T>
void Assemble(const T* sk, int64_t ld, const T* bk, int64_t d, T* ok) {
  using vec = typename Lanes<T>::vec;
  using index = typename Lanes<T>::index;
  constexpr int64_t W = Lanes<T>::kWidth;
  const int64_t full = d / W * W;
  index lane;
  for (int64_t j = 0; j < W; ++j) lane[j] = j;
  for (int64_t a0 = 0; a0 < full; a0 += W) {
    for (int64_t c0 = a0; c0 < full; c0 += W) {
      vec m[W], t[W];
      for (int64_t r = 0; r < W; ++r) {
        const int64_t a = a0 + r;
        // Row a of the packed triangle at columns c0 …: from a·d - a(a-1)/2 + (c - a); in a
        // diagonal block the lanes left of a read the previous row's tail and are replaced.
        vec sv, bv;
        std::memcpy(&sv, sk + a * ld + c0, sizeof(vec));
        std::memcpy(&bv, bk + a * d - a * (a - 1) / 2 + c0 - a, sizeof(vec));
        m[r] = t[r] = sv + bv;
      }
      Transpose<T>(t);
      for (int64_t r = 0; r < W; ++r) {
        vec row = m[r];
        if (c0 == a0) row = lane < (index{} + static_cast<int>(r)) ? t[r] : m[r];
        std::memcpy(ok + (a0 + r) * d + c0, &row, sizeof(vec));
        if (c0 != a0) std::memcpy(ok + (c0 + r) * d + a0, &t[r], sizeof(vec));
      }
    }
  }
  // The columns past the last whole block, and the rows below it.
  for (int64_t a = 0; a < d; ++a) {
    const T* sa = sk + a * ld;
    const T* ba = bk + a * d - a * (a - 1) / 2 - a;
    for (int64_t c = std::max(a, full); c < d; ++c) {
      const T v = sa[c] + ba[c];
      ok[a * d + c] = v;
      ok[c * d + a] = v;
    }
  }
}

// to[0 … d) = from[0 … d): whole vectors, then the tail.
template <typename T>
inline void CopyRow(T* to, const T* from, int64_t d) {
  using vec = typename Lanes<T>::vec;
  constexpr int64_t W = Lanes<T>::kWidth;
  int64_t a = 0;
  for (; a + W <= d; a += W) {
    vec x;
    std::memcpy(&x, from + a, sizeof(vec));
    std::memcpy(to + a, &x, sizeof(vec));
  }
  for (; a < d; ++a) to[a] = from[a];
}

struct Layer {
  const void* g;  // (h, B, d): G[i, b, a] = ∂z_{l,i}/∂x_a of example b
  const void* c;  // (B, n_out, h)
  int64_t h;
};

// Units a panel: in float32 at n_in = 128 the panel of G (256 KB) and two outputs' scaled
// columns (512 KB) stay within a 1 MiB L2.
constexpr int64_t kPanel = 512;

// Outputs a tile: pairs of outputs, against one at a time with the scaling inside the tile,
// ran 1.08x (n_in = 32) and 1.15x (n_in = 128) as fast in float32 on a 2-core AMD EPYC, and
// 0.81x, 0.99x (n_in = 64) and 1.03x in float64; one output at a time in the layout here was
// no better there (0.84x, 0.97x, 0.94x).
constexpr int64_t kOutputs = 2;

// One example's outputs k_lo … k_hi: out[b, k] (d, d) from base[b, k] (d(d+1)/2) and the layers.
template <typename T>
void Example(int64_t b, int64_t batch, int64_t k_lo, int64_t k_hi, int64_t d, int64_t n_out,
             const T* base, const std::vector<Layer>& layers, T* out, T* ga, T* gb, T* s) {
  using vec = typename Lanes<T>::vec;
  constexpr int64_t W = Lanes<T>::kWidth, kGroup = 2 * W;
  const int64_t groups = (d + kGroup - 1) / kGroup, ld = groups * kGroup;
  const int64_t sstride = d * ld;
  bool first = true;
  for (const Layer& layer : layers) {
    const T* g = static_cast<const T*>(layer.g) + b * d;  // unit i of example b at i · B · d
    for (int64_t i0 = 0; i0 < layer.h; i0 += kPanel) {
      const int64_t n = std::min(kPanel, layer.h - i0);
      const int64_t kstride = groups * n * kGroup;
      for (int64_t i = 0; i < n; ++i) CopyRow(ga + i * d, g + (i0 + i) * batch * d, d);
      for (int64_t k = k_lo; k < k_hi; k += kOutputs) {
        const int64_t pair = std::min<int64_t>(kOutputs, k_hi - k);
        // gb: the scaled columns c_k ⊙ G of each output of the pair, zero past d.
        for (int64_t j = 0; j < pair; ++j) {
          const T* c = static_cast<const T*>(layer.c) + (b * n_out + k + j) * layer.h + i0;
          T* to = gb + j * kstride;
          for (int64_t q = 0; q < groups; ++q) {
            const int64_t m = std::min(kGroup, d - q * kGroup);
            T* row = to + q * n * kGroup;
            const T* from = ga + q * kGroup;
            if (m == kGroup) {  // whole groups: two vector multiplies a unit
              for (int64_t i = 0; i < n; ++i, row += kGroup, from += d) {
                const vec ci = vec{} + c[i];
                vec x, y;
                std::memcpy(&x, from, sizeof(vec));
                std::memcpy(&y, from + W, sizeof(vec));
                x *= ci;
                y *= ci;
                std::memcpy(row, &x, sizeof(vec));
                std::memcpy(row + W, &y, sizeof(vec));
              }
            } else {
              for (int64_t i = 0; i < n; ++i, row += kGroup, from += d) {
                for (int64_t a = 0; a < m; ++a) row[a] = c[i] * from[a];
                for (int64_t a = m; a < kGroup; ++a) row[a] = T(0);
              }
            }
          }
        }
        T* sk = s + (k - k_lo) * sstride;
        if (pair == 2)
          UpperTriangle<T, 2>(ga, gb, kstride, n, d, !first, sk, sstride, ld);
        else
          UpperTriangle<T, 1>(ga, gb, kstride, n, d, !first, sk, sstride, ld);
      }
      first = false;
    }
  }
  const int64_t packed = d * (d + 1) / 2;
  for (int64_t k = k_lo; k < k_hi; ++k)
    Assemble<T>(s + (k - k_lo) * sstride, ld, base + (b * n_out + k) * packed, d,
                out + (b * n_out + k) * d * d);
}

// The same outputs with no scratch: base's triangle into out, then one rank-one update a unit,
// row by row on and above the diagonal, then the mirror. Each update reads and writes its rows
// of out (one multiply-add a load and a store, against a register tile's many): several times
// slower than Example, for a worker that could not have its buffers.
template <typename T>
void Direct(int64_t b, int64_t batch, int64_t k_lo, int64_t k_hi, int64_t d, int64_t n_out,
            const T* base, const std::vector<Layer>& layers, T* out) {
  const int64_t packed = d * (d + 1) / 2;
  for (int64_t k = k_lo; k < k_hi; ++k) {
    T* o = out + (b * n_out + k) * d * d;
    const T* bk = base + (b * n_out + k) * packed;
    for (int64_t a = 0; a < d; ++a) {
      const T* ba = bk + a * d - a * (a - 1) / 2 - a;
      for (int64_t c = a; c < d; ++c) o[a * d + c] = ba[c];
    }
    for (const Layer& layer : layers) {
      const T* g = static_cast<const T*>(layer.g) + b * d;
      const T* ck = static_cast<const T*>(layer.c) + (b * n_out + k) * layer.h;
      for (int64_t i = 0; i < layer.h; ++i) {
        const T* gi = g + i * batch * d;
        for (int64_t a = 0; a < d; ++a) {
          const T s = ck[i] * gi[a];
          T* row = o + a * d;
          for (int64_t c = a; c < d; ++c) row[c] += s * gi[c];
        }
      }
    }
    for (int64_t a = 0; a < d; ++a)
      for (int64_t c = a + 1; c < d; ++c) o[c * d + a] = o[a * d + c];
  }
}

// What the workers share. Helpers hold it by shared_ptr: one that the pool starts after the
// call has returned finds no work left and touches nothing else.
struct Work {
  std::vector<Layer> layers;
  const void* base;
  void* out;
  int64_t batch, n_out, d, widest, splits, items;
  int64_t scratch_limit;           // bytes a worker may allocate for Example's buffers
  std::atomic<int64_t> next{0};    // the next work item to claim
  std::atomic<int64_t> active{0};  // helpers that may hold an item
};

// Bytes of Example's buffers for one worker (jaxjac/_hessian_kernel.py's cost() computes the
// same): the panel of G (d × n), two outputs' scaled columns (2 × ld × n), and one d × ld
// accumulator per output.
template <typename T>
int64_t ScratchBytes(int64_t d, int64_t n_out, int64_t widest) {
  constexpr int64_t W = Lanes<T>::kWidth;
  const int64_t ld = (d + 2 * W - 1) / (2 * W) * 2 * W;
  const int64_t n = std::min(kPanel, widest);
  return static_cast<int64_t>(sizeof(T)) * (d * n + 2 * ld * n + n_out * d * ld);
}

// Work items computed by Direct since the library was loaded: lets a test see that a scratch
// limit takes effect (the results are the same either way).
std::atomic<int64_t> direct_items{0};

template <typename T>
void RunItems(Work& w) noexcept {
  constexpr int64_t W = Lanes<T>::kWidth;
  const int64_t ld = (w.d + 2 * W - 1) / (2 * W) * 2 * W;
  const int64_t n = std::min(kPanel, w.widest);
  // Allocated on the first item; every entry read is written. A failed allocation leaves all
  // three empty and this worker on the direct path: nothing here throws into XLA's thread.
  std::unique_ptr<T[]> ga, gb, s;
  bool direct = ScratchBytes<T>(w.d, w.n_out, w.widest) > w.scratch_limit;
  for (int64_t item; (item = w.next.fetch_add(1)) < w.items;) {
    if (!direct && !s) {
      ga.reset(new (std::nothrow) T[w.d * n]);
      gb.reset(new (std::nothrow) T[2 * ld * n]);
      s.reset(new (std::nothrow) T[w.n_out * w.d * ld]);
      if (!ga || !gb || !s) {
        direct = true;
        ga.reset(), gb.reset(), s.reset();
      }
    }
    const int64_t b = item / w.splits, part = item % w.splits;
    const int64_t k_lo = w.n_out * part / w.splits, k_hi = w.n_out * (part + 1) / w.splits;
    if (direct) {
      direct_items.fetch_add(1, std::memory_order_relaxed);
      Direct<T>(b, w.batch, k_lo, k_hi, w.d, w.n_out, static_cast<const T*>(w.base), w.layers,
                static_cast<T*>(w.out));
    } else {
      Example<T>(b, w.batch, k_lo, k_hi, w.d, w.n_out, static_cast<const T*>(w.base), w.layers,
                 static_cast<T*>(w.out), ga.get(), gb.get(), s.get());
    }
  }
}

template <typename T>
ffi::Error Contract(ffi::ThreadPool pool, ffi::AnyBuffer base, ffi::RemainingArgs args,
                    ffi::Result<ffi::AnyBuffer> out, int64_t scratch_limit) {
  const auto od = out->dimensions();
  if (od.size() != 4 || od[2] != od[3])
    return ffi::Error::InvalidArgument("the result must be (B, n_out, n_in, n_in)");
  auto w = std::make_shared<Work>();
  w->batch = od[0], w->n_out = od[1], w->d = od[2], w->widest = 1;
  w->scratch_limit = scratch_limit < 0 ? std::numeric_limits<int64_t>::max() : scratch_limit;
  const auto bd = base.dimensions();
  if (bd.size() != 3 || bd[0] != w->batch || bd[1] != w->n_out ||
      bd[2] != w->d * (w->d + 1) / 2 || base.element_type() != out->element_type())
    return ffi::Error::InvalidArgument("base must be (B, n_out, n_in (n_in + 1) / 2)");
  if (args.size() == 0 || args.size() % 2 != 0)
    return ffi::Error::InvalidArgument("the layers come as (G, c) pairs");
  for (size_t j = 0; j < args.size(); j += 2) {
    auto g = args.get<ffi::AnyBuffer>(j);
    auto c = args.get<ffi::AnyBuffer>(j + 1);
    if (!g.has_value() || !c.has_value()) return ffi::Error::InvalidArgument("not a buffer");
    const auto gd = g->dimensions();
    const auto cd = c->dimensions();
    if (gd.size() != 3 || cd.size() != 3 || gd[1] != w->batch || gd[2] != w->d ||
        cd[0] != w->batch || cd[1] != w->n_out || cd[2] != gd[0] ||
        g->element_type() != out->element_type() || c->element_type() != out->element_type())
      return ffi::Error::InvalidArgument("G must be (h, B, n_in) and c (B, n_out, h)");
    w->layers.push_back({g->untyped_data(), c->untyped_data(), gd[0]});
    w->widest = std::max(w->widest, gd[0]);
  }
  w->base = base.untyped_data();
  w->out = out->untyped_data();
  // Work items: an example, or a range of its outputs where examples are fewer than threads.
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  w->splits = std::clamp<int64_t>((2 * threads + w->batch - 1) / std::max<int64_t>(1, w->batch),
                                  1, std::max<int64_t>(1, w->n_out));
  w->items = w->batch * w->splits;
  const int64_t helpers = std::min(threads, w->items) - 1;
  try {
    for (int64_t t = 0; t < helpers; ++t)
      pool.Schedule([w]() {
        w->active.fetch_add(1);  // before claiming: the caller then waits for this helper
        RunItems<T>(*w);
        w->active.fetch_sub(1, std::memory_order_release);
      });
  } catch (const std::bad_alloc&) {
    // A task the pool could not take: the helpers already scheduled and the caller do its items.
  }
  // The caller works too, and waits only for helpers that started; it never waits for one
  // still queued (the pool's threads may all be busy, with callers like this one).
  RunItems<T>(*w);
  while (w->active.load(std::memory_order_acquire) > 0) std::this_thread::yield();
  return ffi::Error::Success();
}

// scratch_limit: the bytes one worker may allocate for its buffers (negative: no limit); a
// call whose buffers would be larger takes the direct path. The small allocations before any
// work (the layers' list) fail as an error, not an abort.
ffi::Error Dispatch(ffi::ThreadPool pool, ffi::AnyBuffer base, ffi::RemainingArgs args,
                    ffi::Result<ffi::AnyBuffer> out, int64_t scratch_limit) {
  try {
    switch (out->element_type()) {
      case ffi::DataType::F32:
        return Contract<float>(pool, base, args, out, scratch_limit);
      case ffi::DataType::F64:
        return Contract<double>(pool, base, args, out, scratch_limit);
      default:
        return ffi::Error::InvalidArgument("float32 or float64 only");
    }
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "out of memory before the layer sum");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxjacHessianContract, Dispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("scratch_limit"));

// How many work items (an example, or some outputs of one) took the path without scratch.
extern "C" int64_t JaxjacDirectItems() { return direct_items.load(); }

// The vector width this build computes in, in bytes: the column padding of its buffers.
extern "C" int JaxjacVectorBytes() { return JAXJAC_VECTOR_BYTES; }

// Whether this CPU, and the OS's saving of its vector registers, runs code compiled for the
// x86-64 ISA level named ("x86-64-v2", "x86-64-v3" or "x86-64-v4"; 0 for any other name, and
// on any other architecture). Called in the baseline build only, which any x86-64 CPU runs;
// GCC's __builtin_cpu_supports takes a literal, hence one branch a level.
extern "C" int JaxjacCpuSupports(const char* level) {
#if defined(__x86_64__) && !defined(__clang__) && __GNUC__ >= 12  // the levels came in GCC 12
  __builtin_cpu_init();
  if (std::strcmp(level, "x86-64-v2") == 0) return __builtin_cpu_supports("x86-64-v2") != 0;
  if (std::strcmp(level, "x86-64-v3") == 0) return __builtin_cpu_supports("x86-64-v3") != 0;
  if (std::strcmp(level, "x86-64-v4") == 0) return __builtin_cpu_supports("x86-64-v4") != 0;
#else
  (void)level;
#endif
  return 0;
}
