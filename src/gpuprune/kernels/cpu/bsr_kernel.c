/* gpuprune CPU kernel: block-sparse GEMM that walks only the kept K blocks of each row-block.
 *
 *   Out[M, N] = W[M, K] x X[K, N]     (conv: M = C_out, K = C_in*kh*kw, N = batch*H_out*W_out)
 *   K is ordered (kh, kw, c_in), c_in fastest (gemm.K_ORDER): a K block is one tap of a run of
 *   input channels.
 *
 * Memory layout
 *   W   BSR by row-blocks of BM rows: row-block i keeps blocks row_ptr[i]..row_ptr[i+1]-1,
 *       block j covers k in [col_idx[j]*BK, col_idx[j]*BK + BK). Block j is stored k-major,
 *       wt[j][k][r] (BK x BM), so the BM row weights of one k are contiguous. Tile blocks
 *       (MWG x KWG) and SIMD-group vectors (R x simd_k) are the same format with other BM, BK.
 *   X   by N-panels of NR columns, each row k of a panel read as NV vectors of VL columns
 *       through a table of addresses, xp[p][k][v] (k_pad x NV per panel). A convolution's
 *       vector that is one run of input pixels (a 3x3 stride-1 conv's, away from the image's
 *       edges; every vector of a 1x1 conv) points straight into the NCHW input: no copy. A
 *       run with padding columns in it is copied by one masked load, other vectors (stride,
 *       a vector across images) gathered, both into the panel's slot of a [K_pad][NR] buffer;
 *       all-padding vectors and rows past K read zero_row.
 *       A stride-2 convolution first splits its input into phases (rows and columns of one
 *       parity each, once per call, split_phases): every tap then reads a stride-1 run of one
 *       phase, so its vectors are runs read in place, as a stride-1 convolution's, instead of
 *       gathers of every other pixel (which cost ResNet-50's stem and downsampling layers most
 *       of their mapping time).
 *       Rows of K blocks no row-block keeps are never mapped (never read). A linear layer's
 *       panels are transposed copies.
 *   Out scattered to NCHW: element (m, n) goes to out[(n / L) * M * L + m * L + n % L],
 *       L = H_out * W_out pixels per image (L = 1 gives a Linear layer's [B, M]).
 *   Pooled convolutions (a 2x2 stride-2 max pool fused into the store) order the columns by
 *       pool window instead: a panel holds NR / 4 windows, its first NR / 2 columns the top
 *       pixel pairs of those windows (contiguous input runs), the rest the bottom pairs, and
 *       the store reduces each window's four columns to one output pixel. A last panel with
 *       fewer windows packs them: bottom pairs right after the top ones (pool_half). In ceil mode the
 *       windows of an odd last row or column reach past the conv output: their missing pixels
 *       repeat the last row or column, which leaves the max unchanged.
 *
 * Work split (OpenMP, thread count from the caller = torch.get_num_threads()):
 *   fused       with many N-panels, a thread maps one panel (its gathers in its own buffer)
 *               and runs every row-block over it while its rows are hot in L2;
 *   two-phase   with few N-panels (small images), the whole X is mapped first, then
 *               (N-panel, row-block) tasks are scheduled dynamically.
 * Inside a task, micro-tiles of MR rows x NR columns stay in registers while the task walks its
 * kept blocks only (a last panel with fewer columns than NR computes only the vectors that hold
 * columns, with taller micro-tiles); bias, ReLU and the optional max pool are fused into the
 * store.
 *
 * Panels are mapped through tap tables (per panel and tap, the input offset of every column,
 * and per vector whether it is a run, a masked run, zeros or a gather) that
 * depend only on the layer's geometry and input shape: the caller builds them once per shape
 * (gp_conv_tables) and passes them to every call. Panel tables repeat with a period of P
 * panels (Bp whole images), so only min(panels, P) tables (plus the last, partial panel's)
 * are kept, and later panels add an image offset.
 */
#ifdef _OPENMP
#include <omp.h>
#else /* the single-threaded fallback build */
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define VB 64 /* bytes per vector register */
#define NREG 32
#elif defined(__AVX__)
#define VB 32
#define NREG 16
#else
#define VB 16
#define NREG 16 /* SSE2 (16 xmm) and NEON (32 q, conservative) */
#endif
#define VL (VB / 4) /* floats per vector */
#ifndef NV /* vectors per micro-tile row: NR = NV * VL columns */
#if NREG >= 32
#define NV 4 /* 6 x 64 tile: 24 accumulators + 4 x + 1 broadcast */
#else
#define NV 2 /* 6 x 16 (AVX2) tile: 12 accumulators */
#endif
#endif
#define NR (NV * VL)
#define MRCAP 12 /* largest micro-tile height instantiated */
#ifndef MRMAX
#define MRMAX ((NREG - NV - 2) / NV) /* accumulator rows that fit the register file */
#endif

typedef float vf __attribute__((vector_size(VB), aligned(4)));

/* Outputs larger than the threads' L2 caches together are written with non-temporal
 * (streaming) stores: the next layer reads most of them from farther out anyway, and a normal
 * store first reads each line it writes (read for ownership), doubling the traffic. Smaller
 * outputs stay in L2 for the next layer. ResNet-50 at batch 16 on a 2-core Zen 4 VM (1 MiB
 * L2 each, so 2 MiB for two threads): 0.83-0.89x the time against no streaming; fixed
 * thresholds of 16, 4 and 1 MiB tried first gave 0.92-0.98x, 0.91x of 16 MiB's, and no gain
 * over 4 MiB at batch 16 but 1.025x its time at batch 1.
 * gp_set_stream_min_bytes overrides the threshold (tests stream every output; -1: back to
 * the caches' size). */
#include <unistd.h>
static int64_t stream_min = -1;
void gp_set_stream_min_bytes(int64_t bytes) { stream_min = bytes; }
static int64_t stream_min_bytes(int nthreads) {
    if (stream_min >= 0) return stream_min;
    static long l2 = 0; /* read once: every thread computes the same value */
    if (l2 == 0) {
        long size = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
        size = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
        l2 = size > 0 ? size : 1 << 20; /* unknown: a common per-core L2 */
    }
    return (int64_t)l2 * (nthreads > 0 ? nthreads : 1);
}
#if defined(__SSE2__) && (NR * 4) % 64 == 0 /* a row is whole cache lines (not SSE's 8) */
#include <immintrin.h>
#define HAVE_NT 1
/* a[0..NR) to dst (64-byte aligned), bypassing the caches */
static inline void stream_row(float *dst, const float *a) {
#if defined(__AVX512F__)
    for (int c = 0; c < NR; c += 16) _mm512_stream_ps(dst + c, _mm512_loadu_ps(a + c));
#elif defined(__AVX__)
    for (int c = 0; c < NR; c += 8) _mm256_stream_ps(dst + c, _mm256_loadu_ps(a + c));
#else
    for (int c = 0; c < NR; c += 4) _mm_stream_ps(dst + c, _mm_loadu_ps(a + c));
#endif
}
#else
#define HAVE_NT 0
#endif

/* Columns per N-panel: the Python side sizes buffers with it. */
int gp_panel_width(void) { return NR; }
int gp_max_rows(void) { return MRMAX > MRCAP ? MRCAP : MRMAX; }

static inline vf vload(const float *p) { return *(const vf *)p; }

/* One MR x (nv * VL) micro-tile over the kept blocks j0..j1 of its row-block. Row k of X is
 * read through xp[k * NV + v], the address of its v-th vector (see "X" at the top); a panel's
 * vectors past the last column (nv < NV: batch 1, small images) are never computed. */
static inline __attribute__((always_inline)) void micro(
    const int mr, const int nv, const int64_t j0, const int64_t j1, const int bm, const int bk,
    const int32_t *col_idx, const float *wt, const float *const *xp, float (*acc_out)[NR],
    const int first) {
    vf acc[MRCAP][NV];
#pragma GCC unroll 16
    for (int r = 0; r < MRCAP; r++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++)
            if (r < mr && v < nv) acc[r][v] = first ? (vf){0} : vload(acc_out[r] + v * VL);
    /* acc[r][:] += w[r] * x[:] for the MR rows of one k */
#define GP_STEP(xrow, wrow)                                                  \
    do {                                                                     \
        vf xv[NV];                                                           \
        _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++)                 \
            if (v < nv) xv[v] = vload((xrow)[v]);                            \
        _Pragma("GCC unroll 16") for (int r = 0; r < MRCAP; r++) {           \
            if (r < mr) {                                                    \
                const float w_ = (wrow)[r];                                  \
                _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++)         \
                    if (v < nv) acc[r][v] += w_ * xv[v];                     \
            }                                                                \
        }                                                                    \
    } while (0)
    if (bk == 1) {
        /* SIMD-group vectors: one k per kept entry, scattered rows of X: prefetch a few
         * entries ahead since the hardware prefetcher cannot guess the next row */
        for (int64_t j = j0; j < j1; j++) {
            if (j + 8 < j1) __builtin_prefetch(xp[(int64_t)col_idx[j + 8] * NV]);
            GP_STEP(xp + (int64_t)col_idx[j] * NV, wt + j * (int64_t)bm);
        }
    } else {
        for (int64_t j = j0; j < j1; j++) {
            const float *const *xb = xp + (int64_t)col_idx[j] * bk * NV;
            const float *wb = wt + j * (int64_t)bk * bm;
            for (int k = 0; k < bk; k++) GP_STEP(xb + k * NV, wb + k * bm);
        }
    }
#undef GP_STEP
#pragma GCC unroll 16
    for (int r = 0; r < MRCAP; r++)
        if (r < mr)
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++)
                if (v < nv) *(vf *)(acc_out[r] + v * VL) = acc[r][v];
}

/* A pooled panel with `windows` windows holds their top pixel pairs in columns [0, half) and the
 * bottom pairs in [half, 2 half): half = NR / 2 for a full panel; a last panel with fewer
 * windows packs them into its first vectors (at batch 1 the one window of a 2x2 conv output is
 * 4 columns, one vector, where a full layout would spread it over two of four). */
static inline int pool_half(int64_t windows) {
    return windows >= NR / 4 || NV > 4 ? NR / 2 : (int)(2 * windows);
}

/* Bias, ReLU (and the 2x2 max pool) of a row-block's NR columns, scattered to NCHW. Without
 * pooling a column is an output pixel (n0 = first column, N columns, L pixels per image); with
 * pooling the NR / 4 windows of the panel are (n0 = first window, N windows, L per image). */
static void store(int rows, int m0, int64_t n0, int64_t N, int64_t M, int64_t L,
                  float (*acc)[NR], const float *bias, int relu, int pool, float *out,
                  const float *res, int res_relu, int nt) {
    const int width = pool ? NR / 4 : NR;
    int64_t cols = N - n0 < width ? N - n0 : width;
    const int half = pool ? pool_half(cols) : 0;
    for (int r = 0; r < rows; r++) {
        const int64_t m = m0 + r;
        const float b = bias ? bias[m] : 0.0f;
        float *a = acc[r];
        if (pool && half == NR / 2) { /* window j: columns 2j, 2j+1 (top row) and
                                         * NR/2 + 2j, NR/2 + 2j + 1 */
            float rows_max[NR / 2]; /* top against bottom row: whole vectors */
            for (int c = 0; c < NR / 2; c++)
                rows_max[c] = a[c] > a[NR / 2 + c] ? a[c] : a[NR / 2 + c];
            for (int j = 0; j < NR / 4; j++)
                a[j] = rows_max[2 * j] > rows_max[2 * j + 1] ? rows_max[2 * j] : rows_max[2 * j + 1];
        } else if (pool) { /* a packed last panel: the bottom pairs from column `half`, the
                            * comparisons in the full layout's order (same result, NaN too) */
            for (int j = 0; j < half / 2; j++) {
                const float r0 = a[2 * j] > a[half + 2 * j] ? a[2 * j] : a[half + 2 * j];
                const float r1 = a[2 * j + 1] > a[half + 2 * j + 1] ? a[2 * j + 1]
                                                                    : a[half + 2 * j + 1];
                a[j] = r0 > r1 ? r0 : r1;
            }
        }
        for (int c = 0; c < cols; c++) {
            float v = a[c] + b; /* max commutes with the per-row bias and with ReLU */
            a[c] = relu && v < 0.0f ? 0.0f : v;
        }
        int64_t img = n0 / L, pix = n0 % L;
        if (pix + cols <= L) { /* the whole tile lies in one image: one contiguous run */
            const int64_t at = img * M * L + m * L + pix;
            if (res) { /* a residual block's shortcut, added (then ReLU) as the row is stored */
                for (int c = 0; c < cols; c++) {
                    const float v = a[c] + res[at + c];
                    a[c] = res_relu && v < 0.0f ? 0.0f : v;
                }
            }
#if HAVE_NT
            if (nt && cols == NR && ((uintptr_t)(out + at) & 63) == 0) {
                stream_row(out + at, a);
            } else
#endif
            {
                memcpy(out + at, a, cols * sizeof(float));
            }
        } else {
            for (int c = 0; c < cols; c++) {
                const int64_t n = n0 + c, at = (n / L) * M * L + m * L + n % L;
                float v = a[c];
                if (res) {
                    v += res[at];
                    v = res_relu && v < 0.0f ? 0.0f : v;
                }
                out[at] = v;
            }
        }
    }
}

/* Per-thread scratch that persists between calls, one buffer per slot (the gathered panel
 * rows, and the row address tables: see "X" at the top): a fresh multi-MB buffer per call costs
 * more in page faults than the gathers themselves (first touch of every page), so buffers only
 * grow. */
enum { SCRATCH_GATHER = 0, SCRATCH_ROWS = 1, SCRATCH_PHASES = 2, SCRATCH_CHAIN = 3,
       SCRATCH_SLOTS = 7 }; /* 4 chain */

static void *scratch(int slot, size_t bytes) {
    static __thread void *buf[SCRATCH_SLOTS];
    static __thread size_t size[SCRATCH_SLOTS];
    if (bytes > size[slot]) {
        free(buf[slot]);
        buf[slot] = aligned_alloc(64, (bytes + 63) / 64 * 64);
        size[slot] = buf[slot] ? bytes : 0;
    }
    return buf[slot];
}

static float *scratch_gather(size_t floats) {
    return (float *)scratch(SCRATCH_GATHER, floats * sizeof(float));
}

static const float **scratch_rows(size_t entries) {
    return (const float **)scratch(SCRATCH_ROWS, entries * sizeof(float *));
}

/* An all-zero row: padding rows, and rows past K, point here instead of being written. */
static const float zero_row[NR] __attribute__((aligned(64)));

/* k-steps per pass over a row-block's kept list: 512 rows of a panel (128 KiB at NR = 64) stay in
 * L2 while every micro-tile of the row-block reads them; walking all of K per micro-tile instead
 * streams a dense layer's whole panel (over 1 MiB for K = 4608) from L3 again and again. */
#define KC_STEPS 512

/* Vectors of a panel with `left` columns (pooled: windows) from its first on that the
 * micro-kernels compute: a last panel's only those holding columns. */
static inline int panel_vectors(int64_t left, int pool) {
    const int64_t cols = pool ? 2 * (int64_t)pool_half(left) : left;
    return cols >= NR || NV > 4 ? NV : (int)((cols + VL - 1) / VL);
}

/* Narrow panels: a panel with at most NNMAX columns (batch 1: a 2x2 layer's 4, a pooled 2x2
 * layer's one window, a classifier's one row) would fill a sliver of each vector in the
 * micro-kernels above, which then multiply mostly padding. Such a panel is mapped instead as a
 * compact [k_pad][cols] array and multiplied the other way round: the weights of one k are a
 * row vector (wt is k-major), and each column's x is a broadcast. Row vectors are VL wide
 * where the row-block's height is a multiple of VL (tiles), else 4 (SIMD-group vectors of 4
 * rows); other heights keep the vector kernels. */
#define NNMAX (VL / 2) /* 8 on AVX-512, 4 on AVX2, 2 on SSE2/NEON */
#if VL > 4
typedef float v4 __attribute__((vector_size(16), aligned(4)));
#endif

static inline int narrow_width(int bm) {
    if (NV > 4) return 0; /* a custom panel layout (-DNV) keeps the vector kernels */
    if (bm % VL == 0) return VL;
    return bm % 4 == 0 ? 4 : 0;
}

/* Columns of a panel with `left` columns (pooled: windows) when the narrow kernels take it,
 * else 0. */
static inline int narrow_cols(int64_t left, int pool, int bm) {
    const int64_t cols = pool ? 2 * (int64_t)pool_half(left) : left;
    return cols <= NNMAX && narrow_width(bm) ? (int)cols : 0;
}

/* rows r0 .. r0 + g*W of a row-block (g <= 2 row vectors of W rows) x nc columns, over its kept
 * blocks j0..j1: acc_out[row][c] (the layout store() reads). The columns' x comes from the
 * compact array xc (v < 0), or (a panel's tail, below) from vector v of each row of the table
 * xp, whose first nc lanes they are; then they land in acc_out's columns from v * VL on. */
#define GP_NARROW(NAME, VT, W)                                                                \
    static inline __attribute__((always_inline)) void NAME(                                   \
        const int g, const int nc, const int64_t j0, const int64_t j1, const int bm,          \
        const int bk, const int32_t *col_idx, const float *wt, const float *xc,               \
        const float *const *xp, const int v, float (*acc_out)[NR]) {                          \
        VT acc[2][NNMAX];                                                                     \
        _Pragma("GCC unroll 2") for (int a = 0; a < 2; a++)                                   \
            _Pragma("GCC unroll 8") for (int c = 0; c < NNMAX; c++)                           \
                if (a < g && c < nc) acc[a][c] = (VT){0};                                     \
        for (int64_t j = j0; j < j1; j++) {                                                   \
            const int64_t k0 = (int64_t)col_idx[j] * bk;                                      \
            const float *wb = wt + j * (int64_t)bk * bm;                                      \
            for (int k = 0; k < bk; k++) {                                                    \
                const float *xr = v < 0 ? xc + (k0 + k) * nc : xp[(k0 + k) * NV + v];         \
                VT w[2];                                                                      \
                _Pragma("GCC unroll 2") for (int a = 0; a < 2; a++)                           \
                    if (a < g) w[a] = *(const VT *)(wb + (int64_t)k * bm + a * W);            \
                _Pragma("GCC unroll 8") for (int c = 0; c < NNMAX; c++) {                     \
                    if (c < nc) {                                                             \
                        const float x_ = xr[c];                                               \
                        _Pragma("GCC unroll 2") for (int a = 0; a < 2; a++)                   \
                            if (a < g) acc[a][c] += w[a] * x_;                                \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        const int c0 = v < 0 ? 0 : v * VL;                                                    \
        for (int a = 0; a < g; a++)                                                           \
            for (int c = 0; c < nc; c++)                                                      \
                for (int r = 0; r < W; r++) acc_out[a * W + r][c0 + c] = acc[a][c][r];        \
    }
GP_NARROW(narrow_vl, vf, VL)
#if VL > 4
GP_NARROW(narrow_4, v4, 4)
#endif
#undef GP_NARROW

#if VL >= 8
/* SIMD-group vectors of 4 rows (bm = 4, bk = 1) over a narrow panel, VL / 4 kept vectors per
 * register: wt holds them side by side (4 rows each), so one load takes the weights of VL / 4
 * vectors, and a register holding their x rows (4 columns each, one 128-bit lane per vector)
 * gives column c by a broadcast inside each lane. One FMA then does VL / 4 vectors' worth of a
 * column, where the row-vector kernel above does one 4-wide FMA per vector and column, and the
 * lanes are summed once at the end. Reads 4 floats of each x row from column 4h: past its nc
 * columns these are the next row's (or the slack of the panel buffer), never broadcast. */
#define G4 (VL / 4)
#if VL == 16
#define GP_LANES(c) c, c, c, c, 4 + c, 4 + c, 4 + c, 4 + c, 8 + c, 8 + c, 8 + c, 8 + c, \
                    12 + c, 12 + c, 12 + c, 12 + c
#else
#define GP_LANES(c) c, c, c, c, 4 + c, 4 + c, 4 + c, 4 + c
#endif
static inline vf lanes_of(const float *x, const int32_t *idx, int nc, int h) {
    v4 q[G4];
#pragma GCC unroll 4
    for (int g = 0; g < G4; g++) q[g] = *(const v4 *)(x + (int64_t)idx[g] * nc + 4 * h);
    typedef float v8 __attribute__((vector_size(32), aligned(4)));
    const v8 lo = __builtin_shufflevector(q[0], q[1], 0, 1, 2, 3, 4, 5, 6, 7);
#if VL == 16
    const v8 hi = __builtin_shufflevector(q[2], q[3], 0, 1, 2, 3, 4, 5, 6, 7);
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#else
    return lo;
#endif
}

static inline __attribute__((always_inline)) void narrow_simd4(
    const int nc, const int64_t j0, const int64_t j1, const int32_t *col_idx, const float *wt,
    const float *xc, float (*acc_out)[NR]) {
    vf acc[NNMAX];
#pragma GCC unroll 8
    for (int c = 0; c < NNMAX; c++)
        if (c < nc) acc[c] = (vf){0};
    int64_t j = j0;
    for (; j + G4 <= j1; j += G4) {
        const vf w = vload(wt + j * 4);
#pragma GCC unroll 2
        for (int h = 0; h < NNMAX / 4; h++) {
            if (4 * h >= nc) break;
            const vf x = lanes_of(xc, col_idx + j, nc, h);
            if (4 * h + 0 < nc) acc[4 * h + 0] += w * __builtin_shufflevector(x, x, GP_LANES(0));
            if (4 * h + 1 < nc) acc[4 * h + 1] += w * __builtin_shufflevector(x, x, GP_LANES(1));
            if (4 * h + 2 < nc) acc[4 * h + 2] += w * __builtin_shufflevector(x, x, GP_LANES(2));
            if (4 * h + 3 < nc) acc[4 * h + 3] += w * __builtin_shufflevector(x, x, GP_LANES(3));
        }
    }
    /* fewer than VL / 4 vectors left: the row-vector kernel, which writes acc_out */
    narrow_4(1, nc, j, j1, 4, 1, col_idx, wt, xc, NULL, -1, acc_out);
    for (int c = 0; c < nc; c++)
        for (int r = 0; r < 4; r++)
            for (int g = 0; g < G4; g++) acc_out[r][c] += acc[c][4 * g + r];
}
#undef GP_LANES
#endif

/* Every row of a row-block (rows_valid of bm) over a narrow panel of nc columns (xc), or over
 * the nc columns of vector v of a panel's rows (xp, v >= 0: a tail). */
static void narrow_task(int rows_valid, int nc, int64_t j0, int64_t j1, int bm, int bk,
                        const int32_t *col_idx, const float *wt, const float *xc,
                        const float *const *xp, int v, float (*acc)[NR]) {
    const int W = narrow_width(bm);
#if VL >= 8
    if (bm == 4 && bk == 1 && v < 0) {
#define GP_NCASE(C) case C: narrow_simd4(C, j0, j1, col_idx, wt, xc, acc); return;
        switch (nc) {
            GP_NCASE(1) GP_NCASE(2) GP_NCASE(3) GP_NCASE(4)
#if NNMAX >= 8
            GP_NCASE(5) GP_NCASE(6) GP_NCASE(7) GP_NCASE(8)
#endif
            default: break;
        }
#undef GP_NCASE
    }
#endif
    for (int r0 = 0; r0 < rows_valid; r0 += 2 * W) {
        const int g = rows_valid - r0 > W ? 2 : 1;
        const float *w = wt + r0;
        /* constant sizes per call keep the accumulators in registers */
#define GP_NCASE(F, G, C) case C: F(G, C, j0, j1, bm, bk, col_idx, w, xc, xp, v, acc + r0); break;
#if NNMAX >= 8
#define GP_NCOLS(F, G)                                                                    \
    switch (nc) {                                                                         \
        GP_NCASE(F, G, 1) GP_NCASE(F, G, 2) GP_NCASE(F, G, 3) GP_NCASE(F, G, 4)           \
        GP_NCASE(F, G, 5) GP_NCASE(F, G, 6) GP_NCASE(F, G, 7) GP_NCASE(F, G, 8)           \
        default: break;                                                                   \
    }
#elif NNMAX >= 4
#define GP_NCOLS(F, G)                                                                    \
    switch (nc) {                                                                         \
        GP_NCASE(F, G, 1) GP_NCASE(F, G, 2) GP_NCASE(F, G, 3) GP_NCASE(F, G, 4)           \
        default: break;                                                                   \
    }
#else
#define GP_NCOLS(F, G)                                                                    \
    switch (nc) {                                                                         \
        GP_NCASE(F, G, 1) GP_NCASE(F, G, 2) default: break;                               \
    }
#endif
#if VL > 4
        if (W == 4) {
            if (g == 2) {
                GP_NCOLS(narrow_4, 2)
            } else {
                GP_NCOLS(narrow_4, 1)
            }
            continue;
        }
#endif
        if (g == 2) {
            GP_NCOLS(narrow_vl, 2)
        } else {
            GP_NCOLS(narrow_vl, 1)
        }
#undef GP_NCOLS
#undef GP_NCASE
    }
}

/* A panel's tail: a last vector holding at most TAIL_MAX columns (ResNet's 7x7 images at batch
 * 1 are 49 columns: three vectors and one column on AVX-512) costs the micro-kernel a whole
 * vector per row and k; row vectors of a tile's rows (the narrow kernel) do it in nc FMAs per
 * VL rows instead. Only where the row-block is whole row vectors (tiles): a 4-row SIMD-group
 * vector's 4-wide FMAs would cost about what the vector does. The columns of the panel, the
 * vectors holding them, and the row-block's height decide. */
#define TAIL_MAX (NNMAX / 2) /* 4 on AVX-512, 2 on AVX2, 1 on SSE2/NEON */
static inline int tail_cols(int64_t cols, int nv, int bm) {
    const int64_t rem = cols - (int64_t)(nv - 1) * VL;
    return nv > 1 && cols < NR && rem <= TAIL_MAX && narrow_width(bm) == VL ? (int)rem : 0;
}

/* One (N-panel p, row-block i) task: every micro-tile of the row-block over the panel. */
static inline void gemm_task(int64_t p, int64_t i, const float *const *xp, int64_t M, int64_t N,
                             int bm, int bk, const int32_t *row_ptr, const int32_t *col_idx,
                             const float *wt, const float *bias, int relu, int pool, float *out,
                             int64_t L, int mrmax, const float *res, int res_relu,
                             const float *xc, int nc, int nt) {
    static __thread float (*acc)[NR] = NULL; /* partial sums of the row-block: [bm][NR] */
    static __thread int acc_rows = 0;
    if (bm > acc_rows) {
        free(acc);
        acc = (float (*)[NR])aligned_alloc(64, sizeof(float) * NR * (size_t)bm);
        acc_rows = acc ? bm : 0;
        if (!acc) abort(); /* a few KiB: cannot fail short of a broken heap */
    }
    const int64_t j0 = row_ptr[i], j1 = row_ptr[i + 1];
    const int64_t group = KC_STEPS / bk > 1 ? KC_STEPS / bk : 1; /* kept blocks per pass */
    /* vectors holding columns (N counts windows when pooled: NR / 4 per panel) */
    const int rows_valid = (int)((M - i * bm) < bm ? (M - i * bm) : bm);
    int nv = panel_vectors(N - p * (pool ? NR / 4 : NR), pool);
    const int tail = pool ? 0 : tail_cols(N - p * NR, nv, bm);
    if (tail) { /* the last vector's few columns by row vectors; the vectors before as usual */
        narrow_task(rows_valid, tail, j0, j1, bm, bk, col_idx, wt, NULL, xp, nv - 1, acc);
        nv -= 1;
    }
    if (nv < NV) { /* fewer accumulators per row: taller micro-tiles fit the registers */
        const int fit = (NREG - nv - 2) / nv;
        mrmax = fit < MRCAP ? fit : MRCAP;
    }
    if (nc > 0) { /* a narrow panel, mapped compact (xc) */
        narrow_task(rows_valid, nc, j0, j1, bm, bk, col_idx, wt, xc, NULL, -1, acc);
        store(rows_valid, (int)(i * bm), p * (pool ? NR / 4 : NR), N, M, L, acc, bias, relu,
              pool, out, res, res_relu, nt);
        return;
    }
    int64_t ja = j0;
    do {
        const int64_t jb = j1 - ja < group ? j1 : ja + group;
        const int first = ja == j0;
        for (int r0 = 0; r0 < rows_valid;) {
            const int left = rows_valid - r0;
            const float *w = wt + r0;
            /* split so no chunk is much thinner than the rest (32 rows, cap 6: 6+6+6+6+4+4) */
            int mr = left <= mrmax ? left : (left < 2 * mrmax ? (left + 1) / 2 : mrmax);
            /* a constant height and width per call keep the accumulators in registers */
#define GP_CASE(V, R) case R: micro(R, V, ja, jb, bm, bk, col_idx, w, xp, acc + r0, first); break;
#define GP_ROWS(V)                                                                        \
    switch (mr) {                                                                         \
        GP_CASE(V, 12) GP_CASE(V, 11) GP_CASE(V, 10) GP_CASE(V, 9) GP_CASE(V, 8)          \
        GP_CASE(V, 7) GP_CASE(V, 6) GP_CASE(V, 5) GP_CASE(V, 4) GP_CASE(V, 3)             \
        GP_CASE(V, 2) GP_CASE(V, 1) default: break;                                       \
    }
            switch (nv) {
                case NV: GP_ROWS(NV) break;
#if NV > 1
                case 1: GP_ROWS(1) break;
#endif
#if NV > 2
                case 2: GP_ROWS(2) break;
#endif
#if NV > 3
                case 3: GP_ROWS(3) break;
#endif
                default: break;
            }
#undef GP_ROWS
#undef GP_CASE
            r0 += mr;
        }
        ja = jb;
    } while (ja < j1);
    store(rows_valid, (int)(i * bm), p * (pool ? NR / 4 : NR), N, M, L, acc, bias, relu, pool, out,
          res, res_relu, nt);
}

/* The integer arguments of a convolution call, as the caller passes them (one int64 array in
 * this order, built once per input shape): the geometry, pool (a 2x2 stride-2 max pool after
 * the activation: 0 none, 1 floor mode, 2 ceil mode), then the weight's (M, row-blocks, block,
 * padded K, ReLU). */
typedef struct {
    int64_t B, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, pool;
    int64_t M, gm, bm, bk, k_pad, relu;
} gp_geom;

/* How the N columns of a call are laid out: groups of one column (an output pixel) or, pooled,
 * of four (a 2x2 window); `per_image` groups per image, `per_panel` groups per panel. */
typedef struct {
    int64_t per_image, groups, panels, per_panel;
    int64_t period, period_images; /* panel tables repeat every `period` panels */
    int64_t tables;                /* tables kept: min(panels, period), + 1 for a partial tail */
    int tail;                      /* a partial last panel past the first period: own table */
    int taps;
    int64_t table_ints; /* int32s per panel: column offsets, then the vector kinds */
} gp_cols;

/* Where the kernel reads a call's input: the NCHW tensor itself, or (a stride-2, dilation-1
 * convolution) its phases, [B][C][phase][H2][W2], phase (py, px) holding input rows
 * 2 r + qy + py and columns 2 c + qx + px. Only the parities some tap reads are kept: a 1x1
 * convolution's one phase is the subsampled image. Decided here from the geometry alone, so
 * tables and calls agree. */
typedef struct {
    int on;
    int64_t qy, ny, qx, nx; /* first parity and how many parities, of rows and of columns */
    int64_t H2, W2;         /* a phase */
    int64_t plane;          /* floats per channel (H * W without phases) */
    int64_t image;          /* floats per image */
} gp_layout;

static gp_layout layout(const gp_geom *g) {
    gp_layout l = {0};
    l.plane = g->H * g->W;
    l.image = g->C * l.plane;
    if (g->sh != 2 || g->sw != 2 || g->dh != 1 || g->dw != 1) return l;
    l.ny = g->kh > 1 ? 2 : 1; /* taps i = 0 .. kh - 1 read rows of parity (i - ph) mod 2 */
    l.qy = g->kh > 1 ? 0 : g->ph & 1;
    l.nx = g->kw > 1 ? 2 : 1;
    l.qx = g->kw > 1 ? 0 : g->pw & 1;
    l.H2 = (g->H + 1) / 2;
    l.W2 = (g->W + 1) / 2;
    const int64_t plane = l.ny * l.nx * l.H2 * l.W2;
    if (g->B * g->C * plane > INT32_MAX) return l; /* offsets are int32: gather instead */
    l.on = 1;
    l.plane = plane;
    l.image = g->C * plane;
    return l;
}

/* The offset of input pixel (ih, iw) of image b, channel 0, where the kernel reads it. */
static inline int64_t input_offset(const gp_geom *g, const gp_layout *l, int64_t b, int64_t ih,
                                   int64_t iw) {
    if (!l->on) return b * l->image + ih * g->W + iw;
    const int64_t phase = ((ih & 1) - l->qy) * l->nx + ((iw & 1) - l->qx);
    return b * l->image + (phase * l->H2 + (ih >> 1)) * l->W2 + (iw >> 1);
}

/* The phases of input plane t (image b, channel ch: t = b * C + ch); rows and columns past the
 * image are zeros (no table reads them). */
static void split_phases(const gp_geom *g, const gp_layout *l, const float *img, float *dst,
                         int64_t t) {
    const float *src = img + t * g->H * g->W;
    float *d = dst + t * l->plane;
    for (int64_t py = 0; py < l->ny; py++) {
        for (int64_t px = 0; px < l->nx; px++) {
            const int64_t x0 = l->qx + px, cols = (g->W - x0 + 1) / 2;
            for (int64_t r = 0; r < l->H2; r++, d += l->W2) {
                const int64_t ih = 2 * r + l->qy + py;
                int64_t c = 0;
                if (ih < g->H) {
                    const float *row = src + ih * g->W + x0;
                    for (; c < cols; c++) d[c] = row[2 * c];
                }
                for (; c < l->W2; c++) d[c] = 0.0f;
            }
        }
    }
}

static int64_t gcd64(int64_t a, int64_t b) {
    while (b) {
        const int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Pooled output height and width (floor or ceil mode). */
static inline int64_t pooled(const gp_geom *g, int64_t size) {
    return g->pool == 2 ? (size + 1) / 2 : size / 2;
}

static gp_cols columns(const gp_geom *g) {
    gp_cols c;
    c.per_image = g->pool ? pooled(g, g->OH) * pooled(g, g->OW) : g->OH * g->OW;
    c.groups = g->B * c.per_image;
    c.per_panel = g->pool ? NR / 4 : NR;
    c.panels = (c.groups + c.per_panel - 1) / c.per_panel;
    const int64_t d = c.per_image > 0 ? gcd64(c.per_image, c.per_panel) : 1;
    c.period = c.per_image > 0 ? c.per_image / d : 1;
    c.period_images = c.per_panel / d;
    c.tail = c.panels > c.period && c.groups % c.per_panel != 0;
    c.tables = (c.panels < c.period ? c.panels : c.period) + c.tail;
    c.taps = (int)(g->kh * g->kw);
    /* offsets, then (kind, base) per tap and vector, then per tap whether all are gathers */
    c.table_ints = (int64_t)c.taps * (NR + 2 * NV + 1);
    return c;
}

/* The table a panel reads, and the offset of its images from the table's. */
static inline int64_t table_of(const gp_cols *c, const gp_layout *l, int64_t p, int64_t *base) {
    *base = 0;
    if (p < c->period) return p;
    if (c->tail && p == c->panels - 1) return c->tables - 1;
    *base = p / c->period * c->period_images * l->image;
    return p % c->period;
}

/* Panel tables one call keeps (one period of panels, plus a partial last panel's). */
int64_t gp_conv_tables_kept(const int64_t *geom) {
    return columns((const gp_geom *)geom).tables;
}

/* Ints the tables of one call take (the caller allocates them). */
int64_t gp_conv_table_ints(const int64_t *geom) {
    const gp_cols c = columns((const gp_geom *)geom);
    return c.tables * c.table_ints;
}

/* Tap table: for tap (i, j) and panel column c, the offset of the input pixel in
 * the batch (channel 0; input_offset), or -1 where the window reads padding or the column is
 * past N. Row k = (ch, i, j) of the panel is then one gather, img[ch * plane + table[tap][c]]. */
static void tap_table(const gp_geom *g, const gp_cols *cs, int64_t p, int32_t *table) {
    const gp_layout l = layout(g);
    const int64_t left = cs->groups - p * cs->per_panel;
    const int half = pool_half(left < cs->per_panel ? left : cs->per_panel);
    for (int c = 0; c < NR; c++) {
        int64_t grp, dy = 0, dx = 0;
        if (g->pool) { /* see the column order of pooled convolutions at the top */
            grp = c < 2 * half ? p * cs->per_panel + (c % half) / 2 : cs->groups; /* past: none */
            dy = c / half;
            dx = c % 2;
        } else {
            grp = p * cs->per_panel + c;
        }
        int64_t b = -1, oh = 0, ow = 0;
        if (grp < cs->groups) {
            b = grp / cs->per_image;
            const int64_t l = grp % cs->per_image;
            if (g->pool) { /* ceil mode: a pixel past the edge repeats the last one */
                oh = l / pooled(g, g->OW) * 2 + dy;
                ow = l % pooled(g, g->OW) * 2 + dx;
                oh = oh < g->OH ? oh : g->OH - 1;
                ow = ow < g->OW ? ow : g->OW - 1;
            } else {
                oh = l / g->OW;
                ow = l % g->OW;
            }
        }
        for (int tap = 0; tap < cs->taps; tap++) {
            const int64_t i = tap / g->kw, j = tap % g->kw;
            int32_t v = -1;
            if (b >= 0) {
                const int64_t ih = oh * g->sh - g->ph + i * g->dh;
                const int64_t iw = ow * g->sw - g->pw + j * g->dw;
                if (ih >= 0 && ih < g->H && iw >= 0 && iw < g->W)
                    v = (int32_t)input_offset(g, &l, b, ih, iw);
            }
            table[tap * NR + c] = v;
        }
    }
}

/* How the v-th vector of a tap's row is read, (kind, base) per tap and vector:
 *   VEC_RUN     its VL columns are one run of input pixels from offset `base` (channel 0): read
 *               in place (a 3x3 stride-1 conv's vectors away from the image's edges), no copy;
 *   VEC_MASKED  the same run, except columns that read padding: copied with those zeroed,
 *               one masked contiguous load (a small image's vector that spans output rows);
 *   VEC_ZERO    all padding or past N: reads zero_row;
 *   VEC_GATHER  anything else (stride, a vector across images): gathered column by column.
 * Copies go to the panel's slots of the gather buffer. */
enum { VEC_RUN = 0, VEC_MASKED = 1, VEC_ZERO = 2, VEC_GATHER = 3 };

/* dst[c] = t[c] >= 0 ? run[c] : 0 for one vector: a masked load, which never touches the
 * masked-off (padding) columns, where the ISA has one; else column by column. */
#if defined(__AVX512F__) && VL == 16
#include <immintrin.h>
static inline void masked_copy(const int32_t *t, const float *run, float *dst) {
    const __mmask16 m = _mm512_cmpge_epi32_mask(_mm512_loadu_si512(t), _mm512_setzero_si512());
    _mm512_storeu_ps(dst, _mm512_maskz_loadu_ps(m, run));
}
#elif defined(__AVX2__) && VL == 8
#include <immintrin.h>
static inline void masked_copy(const int32_t *t, const float *run, float *dst) {
    const __m256i m = _mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i *)t),
                                         _mm256_set1_epi32(-1));
    _mm256_storeu_ps(dst, _mm256_maskload_ps(run, m));
}
#else
static inline void masked_copy(const int32_t *t, const float *run, float *dst) {
    for (int c = 0; c < VL; c++) dst[c] = t[c] >= 0 ? run[c] : 0.0f;
}
#endif

/* The run's lane-0 offset when every valid column c (t[c] >= 0) reads base + c, with at least
 * one valid; -1 (and *ok 0) otherwise. */
static int32_t affine_base(const int32_t *t, int n, int *ok) {
    int64_t base = 0;
    int found = 0;
    *ok = 1;
    for (int c = 0; c < n; c++) {
        if (t[c] < 0) continue;
        if (!found) {
            base = (int64_t)t[c] - c;
            found = 1;
        } else if (t[c] != base + c) {
            *ok = 0;
        }
    }
    *ok &= found;
    return (int32_t)base;
}

/* kinds[2 * (tap * NV + v)] = (kind, base); then kinds[2 * taps * NV + tap]: 1 where every
 * vector of the tap's row is a gather (tiny images), which is then gathered as one row */
static void vec_kinds(const int32_t *table, int taps, int32_t *kinds) {
    for (int tap = 0; tap < taps; tap++) {
        int gathers = 0;
        for (int v = 0; v < NV; v++) {
            const int32_t *t = table + tap * NR + v * VL;
            int valid = 0, ok;
            for (int c = 0; c < VL; c++) valid += t[c] >= 0;
            const int32_t base = affine_base(t, VL, &ok);
            int32_t kind = VEC_GATHER;
            if (valid == 0) {
                kind = VEC_ZERO;
            } else if (ok) {
                kind = valid == VL ? VEC_RUN : VEC_MASKED;
            }
            kinds[2 * (tap * NV + v)] = kind;
            kinds[2 * (tap * NV + v) + 1] = kind == VEC_RUN || kind == VEC_MASKED ? base : 0;
            gathers += kind == VEC_GATHER;
        }
        kinds[2 * taps * NV + tap] = gathers == NV;
    }
}

static void panel_tables(const gp_geom *g, const gp_cols *c, int64_t p, int32_t *dst) {
    tap_table(g, c, p, dst);
    vec_kinds(dst, c->taps, dst + c->taps * NR);
}

/* Fill the tables of every kept panel (0 .. min(panels, period) - 1, then the partial last). */
void gp_conv_tables(const int64_t *geom, int32_t *tables, int nthreads) {
    const gp_geom *g = (const gp_geom *)geom;
    const gp_cols c = columns(g);
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t t = 0; t < c.tables; t++) {
        const int64_t p = c.tail && t == c.tables - 1 ? c.panels - 1 : t;
        panel_tables(g, &c, p, tables + t * c.table_ints);
    }
}

/* Row k starts K block *kb, which no row-block keeps: it and the unused blocks right after it
 * (up to k1) are skipped, *kb and *block_end left at the last of them, and the tap and channel
 * that row k counts from move on past them; returns the first row after the run. */
static inline int64_t skip_unused(int64_t k, int64_t k1, const uint8_t *used, int bk, int64_t *kb,
                                  int64_t *block_end, int64_t C, int64_t HW, int *tap,
                                  int64_t *ch, const float **src) {
    while (*block_end < k1 && !used[*kb + 1]) ++*kb, *block_end += bk;
    const int64_t end = *block_end < k1 ? *block_end : k1;
    const int64_t at = *ch + (end - k), next = at % C;
    *tap += (int)(at / C);
    *src += (next - *ch) * HW;
    *ch = next;
    return end;
}

/* Row k of K = (kh, kw, c) (c fastest, gemm.K_ORDER): tap k / C of channel k % C, read from
 * the returned plane of `img`. Rows past K have tap `taps` (their table is never read). */
static inline const float *first_row(const float *img, int64_t k, int64_t C, int64_t HW,
                                     int *tap, int64_t *ch) {
    *tap = (int)(k / C);
    *ch = k % C;
    return img + *ch * HW;
}

/* The next row's tap, channel and plane. */
#define NEXT_ROW(tap, ch, src, C, HW, img)                                                        \
    do {                                                                                          \
        if (++(ch) == (C)) {                                                                      \
            (ch) = 0;                                                                             \
            (src) = (img);                                                                        \
            ++(tap);                                                                              \
        } else {                                                                                  \
            (src) += (HW);                                                                        \
        }                                                                                         \
    } while (0)

/* The row addresses xp[k * NV + v] of rows k0..k1 of one panel (zero rows past K); vectors
 * that are no input run are gathered into `gather` (k_pad x NR, the panel's own slots). The
 * channel and tap of row k advance by counting, and `used` is read once per K block: a
 * division per row cost more than the row. */
static inline void map_rows(const float *img, const int32_t *table, const int32_t *kinds,
                            int64_t HW, int64_t C, int taps, int64_t k0, int64_t k1,
                            const uint8_t *used, int bk, int nv, float *gather,
                            const float **xp) {
    const int64_t stride = (int64_t)nv * VL; /* a row's slots: only the vectors read */
    const int64_t K = C * taps;
    int tap;
    int64_t ch;
    const float *src = first_row(img, k0, C, HW, &tap, &ch); /* past K: never read */
    /* K blocks counted, not divided out per block: SIMD-group vectors' blocks are single rows */
    int64_t kb = k0 / bk, block_end = (kb + 1) * bk;
    for (int64_t k = k0; k < k1; kb++, block_end += bk) {
        const int64_t end = block_end < k1 ? block_end : k1;
        if (!used[kb]) { /* no row-block keeps this K block (or the next ones): never read */
            k = skip_unused(k, k1, used, bk, &kb, &block_end, C, HW, &tap, &ch, &src);
            continue;
        }
        for (; k < end; k++) {
            const float **row = xp + k * NV;
            const int32_t *kind = kinds + 2 * tap * NV;
            if (k < K && kinds[2 * taps * NV + tap]) { /* the whole row gathered at once */
                const int32_t *t = table + tap * NR;
                float *dst = gather + k * stride;
#pragma GCC ivdep
                for (int c = 0; c < stride; c++) dst[c] = t[c] >= 0 ? src[t[c]] : 0.0f;
                for (int v = 0; v < nv; v++) row[v] = dst + v * VL;
            } else {
                for (int v = 0; v < nv; v++) {
                    const int32_t kv = k < K ? kind[2 * v] : VEC_ZERO, base = kind[2 * v + 1];
                    const int32_t *t = table + tap * NR + v * VL;
                    float *dst = gather + k * stride + v * VL;
                    if (kv == VEC_RUN) {
                        row[v] = src + base;
                        continue;
                    }
                    if (kv == VEC_ZERO) {
                        row[v] = zero_row;
                        continue;
                    }
                    if (kv == VEC_MASKED) { /* only valid columns are read: in bounds */
                        masked_copy(t, src + base, dst);
                    } else {
#pragma GCC ivdep
                        for (int c = 0; c < VL; c++) dst[c] = t[c] >= 0 ? src[t[c]] : 0.0f;
                    }
                    row[v] = dst;
                }
            }
            NEXT_ROW(tap, ch, src, C, HW, img);
        }
    }
}

/* Rows k0..k1 of a narrow panel (nc columns) as a compact array xc[k][c] (zeros for padding and
 * rows past K, which meet zero weights: never garbage, which could be NaN). */
static inline void map_compact(const float *img, const int32_t *table, int64_t HW, int64_t C,
                               int taps, int64_t k0, int64_t k1, const uint8_t *used, int bk,
                               int nc, float *xc) {
    const int64_t K = C * taps;
    int tap;
    int64_t ch;
    const float *src = first_row(img, k0, C, HW, &tap, &ch);
    /* K blocks counted, not divided out per block: SIMD-group vectors' blocks are single rows */
    int64_t kb = k0 / bk, block_end = (kb + 1) * bk;
    for (int64_t k = k0; k < k1; kb++, block_end += bk) {
        const int64_t end = block_end < k1 ? block_end : k1;
        if (!used[kb]) { /* never read, nor the unused blocks right after */
            k = skip_unused(k, k1, used, bk, &kb, &block_end, C, HW, &tap, &ch, &src);
            continue;
        }
        for (; k < end; k++) {
            float *dst = xc + k * nc;
            const int32_t *t = table + tap * NR;
            for (int c = 0; c < nc; c++) dst[c] = k < K && t[c] >= 0 ? src[t[c]] : 0.0f;
            NEXT_ROW(tap, ch, src, C, HW, img);
        }
    }
}

/* Rows k0..k1 of panel p of X, from its tables, in the input layout `l` of the call. */
static inline void fill_panel(const gp_geom *g, const gp_cols *c, const gp_layout *l,
                              const int32_t *tables, int64_t p, const float *img, int64_t k0,
                              int64_t k1, const uint8_t *used, int bk, float *gather,
                              const float **xp) {
    int64_t base;
    const int32_t *t = tables + table_of(c, l, p, &base) * c->table_ints;
    const int64_t HW = l->plane; /* a channel's floats */
    const int64_t left = c->groups - p * c->per_panel;
    const int nc = narrow_cols(left, (int)g->pool, (int)g->bm);
    if (nc > 0) { /* a narrow panel: the compact array in the gather buffer, no row table */
        map_compact(img + base, t, HW, g->C, c->taps, k0, k1, used, bk, nc, gather);
        return;
    }
    /* a last panel with fewer columns (batch 1: one vector of a 4x4 layer's 64) maps only the
     * vectors the micro-kernels read, packed: its rows' slots a quarter as far apart */
    const int nv = panel_vectors(left, (int)g->pool);
    map_rows(img + base, t, t + c->taps * NR, HW, g->C, c->taps, k0, k1, used, bk, nv, gather,
             xp);
}

/* Panel `p` of a call mapped into a thread's own buffers, then its row-blocks lo .. hi - 1;
 * returns the kept blocks walked. Nothing when the range is empty. */
static inline int64_t panel_rows(const gp_geom *g, const gp_cols *c, const gp_layout *lay,
                                 const int32_t *tables, int64_t p, const float *input,
                                 const uint8_t *used, const int32_t *row_ptr,
                                 const int32_t *col_idx, const float *wt, const float *bias,
                                 float *out, const float *res, int res_relu, int nt, float *panel,
                                 const float **xp, int64_t lo, int64_t hi) {
    if (lo >= hi) return 0;
    const int bm = (int)g->bm, bk = (int)g->bk;
    fill_panel(g, c, lay, tables, p, input, 0, g->k_pad, used, bk, panel, xp);
    const int nc = narrow_cols(c->groups - p * c->per_panel, (int)g->pool, bm);
    int64_t walked = 0;
    for (int64_t i = lo; i < hi; i++) {
        walked += row_ptr[i + 1] - row_ptr[i];
        gemm_task(p, i, xp, g->M, c->groups, bm, bk, row_ptr, col_idx, wt, bias, (int)g->relu,
                  (int)g->pool, out, c->per_image, gp_max_rows(), res, res_relu, panel, nc, nt);
    }
    return walked;
}

/* Where thread `t`'s share (of `nth`) of a call's (panel, row-block) tasks starts, in that
 * order (panel major): the first task at or past t / nth of the work, each task weighing its
 * row-block's kept blocks (+ 1 for the store) times its panel's columns. Every panel weighs the
 * same per column, so this is a split by columns whose seam panel is split by row-blocks: each
 * thread maps only its own panels and the seam. */
static void task_share(const int32_t *row_ptr, int64_t gm, const gp_cols *c, int t, int nth,
                       int64_t *p_at, int64_t *i_at) {
    *p_at = c->panels, *i_at = 0;
    if (t >= nth) return;
    const int64_t per_column = (int64_t)row_ptr[gm] + gm;
    const int64_t want = per_column * c->groups * t / nth;
    /* the panel holding the seam: whole panels before it, then its row-blocks */
    const int64_t p = want / (per_column * c->per_panel);
    if (p >= c->panels) return;
    const int64_t rest = c->groups - p * c->per_panel;
    const int64_t cols = rest < c->per_panel ? rest : c->per_panel;
    int64_t done = p * c->per_panel * per_column;
    for (int64_t i = 0; i < gm; i++) {
        if (done >= want) {
            *p_at = p, *i_at = i;
            return;
        }
        done += (row_ptr[i + 1] - row_ptr[i] + 1) * cols;
    }
    *p_at = p + 1, *i_at = 0;
}

/* A groups=1 convolution, NCHW in and out, with the integer arguments `geom` (gp_geom) and
 * `tables` from gp_conv_tables for them, or NULL to build them in this call. Input offsets must
 * fit int32 (the caller splits bigger batches). mode 0 picks: with enough N-panels for every
 * thread, each thread builds one panel at a time in its own buffer and runs all row-blocks on
 * it while it is in cache (fused, mode 1); otherwise, for one image, each thread runs its own
 * run of (panel, row-block) tasks, mapping the panels it touches itself (mode 3), and for a
 * batch the whole X is built first and (panel, row-block) tasks share it (mode 2). `res` (NULL:
 * none) is an NCHW tensor shaped like the output, added to it as it is stored, after the bias
 * and ReLU, then a ReLU when `res_relu` (a residual block's tail); not with a pool. */
int gp_conv2d(const int64_t *geom, const float *img, const int32_t *row_ptr,
              const int32_t *col_idx, const float *wt, const float *bias, float *out,
              const uint8_t *used, const int32_t *tables, int nthreads, int mode,
              int64_t *visits, const float *res, int res_relu) {
    const gp_geom *g = (const gp_geom *)geom;
    const gp_cols c = columns(g);
    const int64_t M = g->M, gm = g->gm, k_pad = g->k_pad;
    const int bm = (int)g->bm, bk = (int)g->bk, relu = (int)g->relu;
    const int64_t panels = c.panels;
    if (panels == 0) return 0;
    /* built here when the caller has none: cached per calling thread, workers see it through
     * the local pointer below */
    static __thread int32_t *table_cache = NULL;
    static __thread int64_t table_size = 0;
    const int build = tables == NULL;
    if (build) {
        const int64_t need = c.tables * c.table_ints;
        if (need > table_size) {
            free(table_cache);
            table_cache = (int32_t *)malloc(sizeof(int32_t) * need);
            table_size = table_cache ? need : 0;
            if (!table_cache) return 1;
        }
        tables = table_cache;
    }
    int32_t *const own = table_cache;
    if (mode == 0)
        mode = panels >= 4 * (int64_t)nthreads ? 1 : g->B == 1 && nthreads > 1 ? 3 : 2;
    const int nt = c.groups * M * (int64_t)sizeof(float) >= stream_min_bytes(nthreads);
    int64_t walked = 0;
    int status = 0;
    const int mrmax = gp_max_rows();
    float *x = NULL;
    const float **xall = NULL;
    const int64_t splits = panels < nthreads ? (nthreads + panels - 1) / panels : 1;
    const int64_t rows = (k_pad + splits - 1) / splits;
    if (mode == 2) {
        x = scratch_gather((size_t)(panels * k_pad * NR));
        xall = scratch_rows((size_t)(panels * k_pad * NV));
        if (!x || !xall) return 1;
    }
    const gp_layout lay = layout(g);
    const float *input = img;
    if (lay.on) { /* a stride-2 convolution reads its input's phases (split below) */
        input = (const float *)scratch(SCRATCH_PHASES, sizeof(float) * g->B * lay.image);
        if (!input) return 1;
    }
    /* one parallel region per call: waking the thread pool costs more than a small layer's
     * whole GEMM at batch 1, so the phases below are separated by barriers, not new regions */
#pragma omp parallel num_threads(nthreads) reduction(+ : walked)
    {
        if (build) {
#pragma omp for schedule(static) nowait
            for (int64_t t = 0; t < c.tables; t++) {
                const int64_t p = c.tail && t == c.tables - 1 ? c.panels - 1 : t;
                panel_tables(g, &c, p, own + t * c.table_ints);
            }
        }
        if (lay.on) {
#pragma omp for schedule(static) nowait
            for (int64_t t = 0; t < g->B * g->C; t++)
                split_phases(g, &lay, img, (float *)input, t);
        }
        if (build || lay.on) { /* the same for every thread: all or none reach the barrier */
#pragma omp barrier
        }
        if (mode == 1 || mode == 3) {
            /* fused: a thread maps one panel (gathers into its own buffer), runs row-blocks on
             * it while its input rows are in cache */
            float *panel = scratch_gather((size_t)(k_pad * NR));
            const float **xp = scratch_rows((size_t)(k_pad * NV));
            if (!panel || !xp) {
#pragma omp atomic write
                status = 1;
            }
            const int th = omp_get_thread_num(), nth = omp_get_num_threads();
            /* one image: each thread its own share, the same part of the picture in every
             * layer, so a layer reads what its own thread wrote (on this VM the two threads may
             * sit on different L3s). Mode 1: a contiguous run of panels, every row-block;
             * mode 3 (few panels): a run of (panel, row-block) tasks, so the panel at the seam
             * is split by row-blocks (and mapped by both threads) */
            const int own = g->B == 1 || mode == 3;
            /* this thread's tasks: from (q0, i0) up to (q1, i1), panel major */
            int64_t q0 = 0, i0 = 0, q1 = panels, i1 = 0;
            if (mode == 1) {
                q0 = (c.groups * th / nth) / c.per_panel;
                q1 = th == nth - 1 ? panels : (c.groups * (th + 1) / nth) / c.per_panel;
            } else {
                task_share(row_ptr, gm, &c, th, nth, &q0, &i0);
                task_share(row_ptr, gm, &c, th + 1, nth, &q1, &i1);
            }
            for (int64_t p = q0; own && panel && xp && p <= q1 && p < panels; p++)
                walked += panel_rows(g, &c, &lay, tables, p, input, used, row_ptr, col_idx, wt,
                                     bias, out, res, res_relu, nt, panel, xp, p == q0 ? i0 : 0,
                                     p == q1 ? i1 : gm);
#pragma omp for schedule(dynamic, 1) nowait
            for (int64_t p = 0; p < (own ? 0 : panels); p++)
                if (panel && xp)
                    walked += panel_rows(g, &c, &lay, tables, p, input, used, row_ptr, col_idx,
                                         wt, bias, out, res, res_relu, nt, panel, xp, 0, gm);
        } else {
            /* two-phase: the whole X first (implicit barrier), then (panel, row-block) tasks;
             * with fewer panels than threads (batch 1, small images) the panels' rows are
             * split too, so no thread idles through the mapping */
#pragma omp for schedule(static)
            for (int64_t t = 0; t < panels * splits; t++) {
                const int64_t p = t / splits, s = t % splits;
                const int64_t k0 = s * rows, k1 = k0 + rows < k_pad ? k0 + rows : k_pad;
                fill_panel(g, &c, &lay, tables, p, input, k0, k1, used, bk, x + p * k_pad * NR,
                           xall + p * k_pad * NV);
            }
            const int64_t tasks = panels * gm;
#pragma omp for schedule(dynamic, 1) nowait
            for (int64_t t = 0; t < tasks; t++) {
                const int64_t p = t / gm, i = t % gm;
                walked += row_ptr[i + 1] - row_ptr[i];
                gemm_task(p, i, xall + p * k_pad * NV, M, c.groups, bm, bk, row_ptr, col_idx, wt,
                          bias, relu, (int)g->pool, out, c.per_image, mrmax, res, res_relu,
                          x + p * k_pad * NR,
                          narrow_cols(c.groups - p * c.per_panel, (int)g->pool, bm), nt);
            }
        }
#if HAVE_NT
        /* streamed rows are weakly ordered: each thread's visible before the region's closing
         * barrier, after which the caller (or the next layer) reads them; one fence per thread,
         * not per task (a SIMD-group task stores only 4 rows) */
        if (nt) _mm_sfence();
#endif
    }
    if (visits) *visits += walked;
    return status;
}

/* One convolution of a chain (gp_conv_chain): gp_conv2d's arguments, fixed per input shape, and
 * which buffers it reads and writes: CHAIN_IN the chain's input, CHAIN_OUT its output, 0 ..
 * CHAIN_BUFFERS - 1 the chain's scratch buffers; `res` (CHAIN_NONE: none) is added in the store,
 * then a ReLU when `res_relu` (a residual block's tail). `dst` may be `res`: the store reads each
 * element of the shortcut just before it writes the same element. */
typedef struct {
    const int64_t *geom;
    const int32_t *row_ptr, *col_idx;
    const float *wt, *bias;
    const uint8_t *used;
    const int32_t *tables;
    int64_t out_floats; /* the output's size */
    int64_t mode;
    int64_t src, dst, res, res_relu;
} gp_chain_call;

enum { CHAIN_IN = -1, CHAIN_OUT = -2, CHAIN_NONE = -3, CHAIN_BUFFERS = 4 };

/* Convolutions run back to back, each reading an earlier one's output (or the input): one call
 * from Python for a whole run of layers or residual blocks (at batch 1 the per-layer Python and
 * ctypes cost is a sixth of VGG16's forward). The intermediates live in per-thread scratch
 * buffers, each as large as the largest output written to it. */
int gp_conv_chain(int n, const gp_chain_call *calls, const float *x, float *out, int nthreads) {
    int64_t need[CHAIN_BUFFERS] = {0};
    for (int i = 0; i < n; i++) {
        const gp_chain_call *c = &calls[i];
        if (c->src < CHAIN_OUT || c->src >= CHAIN_BUFFERS || c->dst < CHAIN_OUT ||
            c->dst >= CHAIN_BUFFERS || c->dst == CHAIN_IN || c->res < CHAIN_NONE ||
            c->res >= CHAIN_BUFFERS || c->dst == c->src)
            return 2; /* the caller's program is malformed */
        if (c->dst >= 0 && c->out_floats > need[c->dst]) need[c->dst] = c->out_floats;
    }
    float *buf[CHAIN_BUFFERS] = {NULL};
    for (int b = 0; b < CHAIN_BUFFERS; b++) {
        if (!need[b]) continue;
        buf[b] = (float *)scratch(SCRATCH_CHAIN + b, (size_t)need[b] * sizeof(float));
        if (!buf[b]) return 1;
    }
#define GP_SLOT(s) ((s) == CHAIN_IN ? (float *)x : (s) == CHAIN_OUT ? out : buf[s])
    for (int i = 0; i < n; i++) {
        const gp_chain_call *c = &calls[i];
        const float *res = c->res == CHAIN_NONE ? NULL : GP_SLOT(c->res);
        const int status = gp_conv2d(c->geom, GP_SLOT(c->src), c->row_ptr, c->col_idx, c->wt,
                                     c->bias, GP_SLOT(c->dst), c->used, c->tables, nthreads,
                                     (int)c->mode, NULL, res, (int)c->res_relu);
        if (status != 0) return status;
    }
#undef GP_SLOT
    return 0;
}

/* A chain run image by image: each thread takes whole images from a shared counter and runs
 * every convolution of the chain on one image alone (`calls` prepared for a batch of one), with
 * no barrier between layers and an image's activations in its thread's caches. */
int gp_conv_chain_images(int n, const gp_chain_call *calls, const float *x, float *out,
                         int64_t images, int64_t in_floats, int64_t out_floats, int nthreads) {
    int status = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t b = 0; b < images; b++) {
        const int s = gp_conv_chain(n, calls, x + b * in_floats, out + b * out_floats, 1);
        if (s != 0) {
#pragma omp atomic write
            status = s;
        }
    }
    return status;
}

/* A linear layer: in [N, K] (rows = batch) -> out [N, M]. */
int gp_linear(const float *in, int64_t N, int64_t K, int64_t M, int64_t gm, int bm, int bk,
              int64_t k_pad, const int32_t *row_ptr, const int32_t *col_idx, const float *wt,
              const float *bias, int relu, float *out, int nthreads, int64_t *visits) {
    const int64_t panels = (N + NR - 1) / NR, tasks = panels * gm;
    float *x = scratch_gather((size_t)(panels * k_pad * NR));
    const float **xp = scratch_rows((size_t)(panels * k_pad * NV));
    if (!x || !xp) return 1;
    const int mrmax = gp_max_rows();
    int64_t walked = 0;
    /* one region for both phases: at batch 1 a classifier layer is a few microseconds of work,
     * less than waking the pool twice */
#pragma omp parallel num_threads(nthreads) reduction(+ : walked)
    {
#pragma omp for schedule(static)
        for (int64_t p = 0; p < panels; p++) {
            float *slab = x + p * k_pad * NR;
            const int nc = narrow_cols(N - p * NR, 0, bm);
            if (nc > 0) { /* a few rows (batch 1): the compact array of the narrow kernels */
                for (int64_t k = 0; k < k_pad; k++)
                    for (int c = 0; c < nc; c++)
                        slab[k * nc + c] = k < K ? in[(p * NR + c) * K + k] : 0.0f;
                continue;
            }
            /* only the columns the micro-kernels read (a batch of 1 fills one vector, not NR) */
            const int width = panel_vectors(N - p * NR, 0) * VL;
            for (int64_t k = 0; k < k_pad; k++) {
                for (int c = 0; c < width; c++) {
                    const int64_t n = p * NR + c;
                    slab[k * NR + c] = (n < N && k < K) ? in[n * K + k] : 0.0f;
                }
                for (int v = 0; v < NV; v++)
                    xp[(p * k_pad + k) * NV + v] = slab + k * NR + v * VL;
            }
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            const int64_t p = t / gm, i = t % gm;
            walked += row_ptr[i + 1] - row_ptr[i];
            gemm_task(p, i, xp + p * k_pad * NV, M, N, bm, bk, row_ptr, col_idx, wt, bias, relu,
                      0, out, 1, mrmax, NULL, 0, x + p * k_pad * NR, narrow_cols(N - p * NR, 0, bm),
                      0);
        }
    }
    if (visits) *visits += walked;
    return 0;
}

/* A k x k max pool (any stride and padding, dilation 1) over NCHW planes: out[plane][OH][OW].
 * Padding never wins (windows are clipped to the input), NaN does (as in PyTorch). A row of
 * outputs is the column max over its window's input rows (contiguous, whole vectors), then
 * the max over each window's columns. PyTorch's own NCHW max pool takes over ten times longer
 * (ResNet-50's stem pool at batch 16 here: 48-55 ms, this one 3.9). */
static inline float nanmax(float m, float x) { return (x > m || x != x) ? x : m; }

int gp_maxpool2d(const float *in, int64_t planes, int64_t H, int64_t W, int64_t kh, int64_t kw,
                 int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW,
                 float *out, int nthreads) {
    int status = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *col = (float *)malloc(sizeof(float) * (size_t)(W > 0 ? W : 1));
        if (!col) {
#pragma omp atomic write
            status = 1;
        }
#pragma omp for schedule(static)
        for (int64_t p = 0; p < planes; p++) {
            if (!col) continue;
            const float *src = in + p * H * W;
            float *dst = out + p * OH * OW;
            for (int64_t i = 0; i < OH; i++) {
                int64_t r0 = i * sh - ph, r1 = r0 + kh;
                r0 = r0 < 0 ? 0 : r0;
                r1 = r1 > H ? H : r1;
                for (int64_t c = 0; c < W; c++) col[c] = -__builtin_inff();
                for (int64_t r = r0; r < r1; r++) {
                    const float *row = src + r * W;
                    for (int64_t c = 0; c < W; c++) col[c] = nanmax(col[c], row[c]);
                }
                /* windows wholly inside the row [j_lo, j_hi) need no clipping: ResNet's 3x3
                 * stride-2 window gets its own loop, which the compiler vectorises */
                int64_t j_lo = (pw + sw - 1) / sw, j_hi = W + pw >= kw ? (W + pw - kw) / sw + 1 : 0;
                j_lo = j_lo < OW ? j_lo : OW;
                j_hi = j_hi < j_lo ? j_lo : (j_hi > OW ? OW : j_hi);
                float *row_out = dst + i * OW;
                if (kw == 3 && sw == 2) {
                    const float *q = col - pw;
                    for (int64_t j = j_lo; j < j_hi; j++)
                        row_out[j] = nanmax(nanmax(q[2 * j], q[2 * j + 1]), q[2 * j + 2]);
                } else {
                    for (int64_t j = j_lo; j < j_hi; j++) {
                        const float *q = col + j * sw - pw;
                        float m = q[0];
                        for (int64_t t = 1; t < kw; t++) m = nanmax(m, q[t]);
                        row_out[j] = m;
                    }
                }
                for (int64_t j = 0; j < OW; j++) {
                    if (j == j_lo) j = j_hi; /* the edges: clipped windows */
                    if (j >= OW) break;
                    int64_t c0 = j * sw - pw, c1 = c0 + kw;
                    c0 = c0 < 0 ? 0 : c0;
                    c1 = c1 > W ? W : c1;
                    float m = -__builtin_inff();
                    for (int64_t c = c0; c < c1; c++) m = nanmax(m, col[c]);
                    row_out[j] = m;
                }
            }
        }
        free(col);
    }
    return status;
}
