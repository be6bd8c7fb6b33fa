/* gpuprune CPU kernel: block-sparse GEMM that walks only the kept K blocks of each row-block.
 *
 *   Out[M, N] = W[M, K] x X[K, N]     (conv: M = C_out, K = C_in*kh*kw, N = batch*H_out*W_out)
 *
 * Memory layout
 *   W   BSR by row-blocks of BM rows: row-block i keeps blocks row_ptr[i]..row_ptr[i+1]-1,
 *       block j covers k in [col_idx[j]*BK, col_idx[j]*BK + BK). Block j is stored k-major,
 *       wt[j][k][r] (BK x BM), so the BM row weights of one k are contiguous. Tile blocks
 *       (MWG x KWG) and SIMD-group vectors (R x simd_k) are the same format with other BM, BK.
 *   X   panel-major: for each N-panel of NR columns a contiguous [K_pad][NR] slab,
 *       x[p][k][c] = X[k, p*NR + c], rows past K and columns past N zero. Contiguous panels keep
 *       a panel's rows in distinct cache sets (a plain [K][N] buffer with N = 1024 puts every
 *       row in the same L1 set). Convolutions fill it by im2col straight from NCHW input,
 *       skipping the rows of K blocks no row-block keeps (never read).
 *   Out scattered to NCHW: element (m, n) goes to out[(n / L) * M * L + m * L + n % L],
 *       L = H_out * W_out pixels per image (L = 1 gives a Linear layer's [B, M]).
 *
 * Work split (OpenMP, thread count from the caller = torch.get_num_threads()):
 *   fused       with many N-panels, a thread im2cols one panel into its own buffer and runs
 *               every row-block over it while it is hot in L2;
 *   two-phase   with few N-panels (small images), the whole X is built first, then
 *               (N-panel, row-block) tasks are scheduled dynamically.
 * Inside a task, micro-tiles of MR rows x NR columns stay in registers while the task walks its
 * kept blocks only; bias and ReLU are fused into the store.
 */
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

/* Columns per N-panel: the Python side sizes buffers with it. */
int gp_panel_width(void) { return NR; }
int gp_max_rows(void) { return MRMAX > MRCAP ? MRCAP : MRMAX; }

static inline vf vload(const float *p) { return *(const vf *)p; }

/* One MR x NR micro-tile over the kept blocks j0..j1 of its row-block. */
static inline __attribute__((always_inline)) void micro(
    const int mr, const int64_t j0, const int64_t j1, const int bm, const int bk,
    const int32_t *col_idx, const float *wt, const float *panel, float (*acc_out)[NR],
    const int first) {
    vf acc[MRCAP][NV];
#pragma GCC unroll 16
    for (int r = 0; r < MRCAP; r++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++)
            if (r < mr) acc[r][v] = first ? (vf){0} : vload(acc_out[r] + v * VL);
    /* acc[r][:] += w[r] * x[:] for the MR rows of one k */
#define GP_STEP(xrow, wrow)                                                  \
    do {                                                                     \
        vf xv[NV];                                                           \
        _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++)                 \
            xv[v] = vload((xrow) + v * VL);                                  \
        _Pragma("GCC unroll 16") for (int r = 0; r < MRCAP; r++) {           \
            if (r < mr) {                                                    \
                const float w_ = (wrow)[r];                                  \
                _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++)         \
                    acc[r][v] += w_ * xv[v];                                 \
            }                                                                \
        }                                                                    \
    } while (0)
    if (bk == 1) {
        /* SIMD-group vectors: one k per kept entry, scattered rows of the panel: prefetch
         * a few entries ahead since the hardware prefetcher cannot guess the next row */
        for (int64_t j = j0; j < j1; j++) {
            if (j + 8 < j1) __builtin_prefetch(panel + (int64_t)col_idx[j + 8] * NR);
            GP_STEP(panel + (int64_t)col_idx[j] * NR, wt + j * (int64_t)bm);
        }
    } else {
        for (int64_t j = j0; j < j1; j++) {
            const float *xb = panel + (int64_t)col_idx[j] * bk * NR;
            const float *wb = wt + j * (int64_t)bk * bm;
            for (int k = 0; k < bk; k++) GP_STEP(xb + k * NR, wb + k * bm);
        }
    }
#undef GP_STEP
#pragma GCC unroll 16
    for (int r = 0; r < MRCAP; r++)
        if (r < mr)
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) *(vf *)(acc_out[r] + v * VL) = acc[r][v];
}

static void store(int rows, int m0, int64_t n0, int64_t N, int64_t M, int64_t L,
                  float (*acc)[NR], const float *bias, int relu, float *out) {
    int64_t cols = N - n0 < NR ? N - n0 : NR;
    for (int r = 0; r < rows; r++) {
        const int64_t m = m0 + r;
        const float b = bias ? bias[m] : 0.0f;
        float *a = acc[r];
        for (int c = 0; c < cols; c++) {
            float v = a[c] + b;
            a[c] = relu && v < 0.0f ? 0.0f : v;
        }
        int64_t img = n0 / L, pix = n0 % L;
        if (pix + cols <= L) { /* the whole tile lies in one image: one contiguous run */
            memcpy(out + img * M * L + m * L + pix, a, cols * sizeof(float));
        } else {
            for (int c = 0; c < cols; c++) {
                const int64_t n = n0 + c;
                out[(n / L) * M * L + m * L + n % L] = a[c];
            }
        }
    }
}

/* Per-thread scratch that persists between calls: a fresh multi-MB buffer per call costs more in
 * page faults than the im2col itself (first touch of every page), so buffers only grow. */
static float *scratch(size_t floats) {
    static __thread float *buf = NULL;
    static __thread size_t size = 0;
    if (floats > size) {
        free(buf);
        buf = (float *)aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64);
        size = buf ? floats : 0;
    }
    return buf;
}

/* k-steps per pass over a row-block's kept list: 512 rows of a panel (128 KiB at NR = 64) stay in
 * L2 while every micro-tile of the row-block reads them; walking all of K per micro-tile instead
 * streams a dense layer's whole panel (over 1 MiB for K = 4608) from L3 again and again. */
#define KC_STEPS 512

/* One (N-panel p, row-block i) task: every micro-tile of the row-block over the panel. */
static inline void gemm_task(int64_t p, int64_t i, const float *panel, int64_t M, int64_t N,
                             int bm, int bk, const int32_t *row_ptr, const int32_t *col_idx,
                             const float *wt, const float *bias, int relu, float *out, int64_t L,
                             int mrmax) {
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
    const int rows_valid = (int)((M - i * bm) < bm ? (M - i * bm) : bm);
    int64_t ja = j0;
    do {
        const int64_t jb = j1 - ja < group ? j1 : ja + group;
        const int first = ja == j0;
        for (int r0 = 0; r0 < rows_valid;) {
            const int left = rows_valid - r0;
            const float *w = wt + r0;
            /* split so no chunk is much thinner than the rest (32 rows, cap 6: 6+6+6+6+4+4) */
            int mr = left <= mrmax ? left : (left < 2 * mrmax ? (left + 1) / 2 : mrmax);
            /* a constant height per call keeps the accumulators in registers */
            switch (mr) {
#define GP_CASE(R) case R: micro(R, ja, jb, bm, bk, col_idx, w, panel, acc + r0, first); break;
                GP_CASE(12) GP_CASE(11) GP_CASE(10) GP_CASE(9) GP_CASE(8) GP_CASE(7)
                GP_CASE(6) GP_CASE(5) GP_CASE(4) GP_CASE(3) GP_CASE(2) GP_CASE(1)
#undef GP_CASE
                default: break;
            }
            r0 += mr;
        }
        ja = jb;
    } while (ja < j1);
    store(rows_valid, (int)(i * bm), p * NR, N, M, L, acc, bias, relu, out);
}

/* The weight and epilogue of one layer, as passed from Python. */
typedef struct {
    int64_t M, gm, k_pad;
    int32_t bm, bk;
    const int32_t *row_ptr, *col_idx;
    const float *wt, *bias;
    int32_t relu;
} gp_weight;

/* Out = act(W x X + bias) over a panel-major X that is already filled. */
static int64_t gemm_all(const gp_weight *w, const float *x, int64_t N, float *out, int64_t L,
                        int nthreads) {
    const int64_t panels = (N + NR - 1) / NR, tasks = panels * w->gm;
    const int mrmax = gp_max_rows();
    int64_t walked = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) reduction(+ : walked)
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t p = t / w->gm, i = t % w->gm;
        walked += w->row_ptr[i + 1] - w->row_ptr[i];
        gemm_task(p, i, x + p * w->k_pad * NR, w->M, N, w->bm, w->bk, w->row_ptr, w->col_idx,
                  w->wt, w->bias, w->relu, out, L, mrmax);
    }
    return walked;
}

/* im2col source table: for tap (i, j) and panel column c, the offset of the input pixel in
 * the batch (channel 0), or -1 where the window reads padding or the column is past N. Row
 * k = (ch, i, j) of the panel is then one gather, img[ch * H * W + table[tap][c]]. */
static void tap_table(int64_t p, int64_t N, int64_t L, int64_t OW, int64_t C, int64_t H,
                      int64_t W, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                      int32_t *table) {
    for (int tap = 0; tap < kh * kw; tap++) {
        const int i = tap / kw, j = tap % kw;
        for (int c = 0; c < NR; c++) {
            const int64_t n = p * NR + c;
            int32_t v = -1;
            if (n < N) {
                const int64_t b = n / L, l = n % L;
                const int64_t ih = l / OW * sh - ph + (int64_t)i * dh;
                const int64_t iw = l % OW * sw - pw + (int64_t)j * dw;
                if (ih >= 0 && ih < H && iw >= 0 && iw < W) v = (int32_t)((b * C * H + ih) * W + iw);
            }
            table[tap * NR + c] = v;
        }
    }
}

/* For wide outputs a tap's panel row is a few long runs: copy them instead of gathering.
 * seg[tap] lists (dst column, source offset or -1 for zeros, length) runs, ended by len 0. */
typedef struct {
    int32_t dst, src, len;
} seg_t;

/* runs per panel <= NR / OW + 2, each at most zeros + copy with neighbouring zeros merged */
static int max_segs(int64_t OW) { return (int)(2 * (NR / OW) + 8); }

static void tap_segments(const int32_t *table, int taps, int sw, int nseg, seg_t *seg) {
    for (int tap = 0; tap < taps; tap++) {
        const int32_t *t = table + tap * NR;
        seg_t *out = seg + tap * nseg;
        int cnt = 0;
        for (int c = 0; c < NR;) {
            int e = c + 1;
            if (t[c] < 0) {
                while (e < NR && t[e] < 0) e++;
            } else {
                while (e < NR && t[e] == t[e - 1] + sw) e++;
            }
            if (cnt < nseg - 1) out[cnt++] = (seg_t){c, t[c], e - c};
            c = e;
        }
        out[cnt] = (seg_t){NR, -1, 0};
    }
}

static inline void im2col_rows_seg(const float *img, const seg_t *seg, int nseg, int64_t HW,
                                   int64_t K, int taps, int sw, int64_t k0, int64_t k1,
                                   const uint8_t *used, int bk, float *panel) {
    for (int64_t k = k0; k < k1; k++) {
        if (!used[k / bk]) continue; /* no row-block keeps this K block: never read */
        float *row = panel + k * NR;
        if (k >= K) {
            for (int c = 0; c < NR; c++) row[c] = 0.0f;
            continue;
        }
        const float *src = img + k / taps * HW;
        for (const seg_t *g = seg + k % taps * nseg; g->len > 0; g++) {
            float *d = row + g->dst;
            if (g->src < 0) {
                for (int c = 0; c < g->len; c++) d[c] = 0.0f;
            } else if (sw == 1) {
                const float *q = src + g->src;
                for (int c = 0; c < g->len; c++) d[c] = q[c];
            } else {
                const float *q = src + g->src;
                for (int c = 0; c < g->len; c++) d[c] = q[c * sw];
            }
        }
    }
}

/* Rows k0..k1 of one panel (zero rows past K). */
static inline void im2col_rows(const float *img, const int32_t *table, int64_t HW, int64_t K,
                               int taps, int64_t k0, int64_t k1, const uint8_t *used, int bk,
                               float *panel) {
    for (int64_t k = k0; k < k1; k++) {
        if (!used[k / bk]) continue; /* no row-block keeps this K block: never read */
        float *row = panel + k * NR;
        if (k >= K) {
            for (int c = 0; c < NR; c++) row[c] = 0.0f;
            continue;
        }
        const float *src = img + k / taps * HW;
        const int32_t *t = table + k % taps * NR;
#pragma GCC ivdep
        for (int c = 0; c < NR; c++) row[c] = t[c] >= 0 ? src[t[c]] : 0.0f;
    }
}

/* A groups=1 convolution, NCHW in and out. Input offsets must fit int32 (the caller splits
 * bigger batches). mode 0 picks: with enough N-panels for every thread, each thread builds one
 * panel at a time in its own buffer and runs all row-blocks on it while it is in cache (fused);
 * otherwise the whole X is built first and (panel, row-block) tasks share it. */
int gp_conv2d(const float *img, int64_t B, int64_t C, int64_t H, int64_t W, int kh, int kw,
              int sh, int sw, int ph, int pw, int dh, int dw, int64_t OH, int64_t OW,
              int64_t M, int64_t gm, int bm, int bk, int64_t k_pad, const int32_t *row_ptr,
              const int32_t *col_idx, const float *wt, const float *bias, int relu, float *out,
              const uint8_t *used, int nthreads, int mode, int64_t *visits) {
    const int taps = kh * kw;
    const int64_t K = C * taps, L = OH * OW, N = B * L, HW = H * W;
    const int64_t panels = (N + NR - 1) / NR;
    /* cached per calling thread; workers see it through the local pointers below */
    static __thread int32_t *table_cache = NULL;
    static __thread int64_t table_size = 0;
    const int use_seg = OW >= 16; /* long runs: copy them (else gather through the table) */
    const int nseg = max_segs(OW);
    const int64_t table_ints = taps * NR * panels;
    const int64_t need = table_ints + (use_seg ? 3 * (int64_t)taps * nseg * panels : 0);
    if (need > table_size) {
        free(table_cache);
        table_cache = (int32_t *)malloc(sizeof(int32_t) * need);
        table_size = table_cache ? need : 0;
        if (!table_cache) return 1;
    }
    int32_t *const table = table_cache;
    seg_t *const segs = (seg_t *)(table + table_ints);
    /* a panel's tap table (and runs), then its rows: each panel needs only its own table */
#define GP_FILL(p, dst)                                                                        \
    do {                                                                                       \
        int32_t *t_ = table + (p) * taps * NR;                                                 \
        tap_table(p, N, L, OW, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, t_);                   \
        if (use_seg) {                                                                         \
            seg_t *s_ = segs + (p) * taps * nseg;                                              \
            tap_segments(t_, taps, sw, nseg, s_);                                              \
            im2col_rows_seg(img, s_, nseg, HW, K, taps, sw, 0, k_pad, used, bk, dst);          \
        } else {                                                                               \
            im2col_rows(img, t_, HW, K, taps, 0, k_pad, used, bk, dst);                        \
        }                                                                                      \
    } while (0)
    if (mode == 0) mode = panels >= 4 * (int64_t)nthreads ? 1 : 2;
    int64_t walked = 0;
    int status = 0;
    const int mrmax = gp_max_rows();
    float *x = NULL;
    if (mode == 2) {
        x = scratch((size_t)(panels * k_pad * NR));
        if (!x) return 1;
    }
    /* one parallel region per call: waking the thread pool costs more than a small layer's
     * whole GEMM at batch 1, so the phases below are separated by barriers, not new regions */
#pragma omp parallel num_threads(nthreads) reduction(+ : walked)
    {
        if (mode == 1) {
            /* fused: a thread builds one panel in its own buffer, runs every row-block on it */
            float *panel = scratch((size_t)(k_pad * NR));
            if (!panel) {
#pragma omp atomic write
                status = 1;
            }
#pragma omp for schedule(dynamic, 1)
            for (int64_t p = 0; p < panels; p++) {
                if (!panel) continue;
                GP_FILL(p, panel);
                for (int64_t i = 0; i < gm; i++) {
                    walked += row_ptr[i + 1] - row_ptr[i];
                    gemm_task(p, i, panel, M, N, bm, bk, row_ptr, col_idx, wt, bias, relu, out,
                              L, mrmax);
                }
            }
        } else {
            /* two-phase: the whole X first (implicit barrier), then (panel, row-block) tasks */
#pragma omp for schedule(static)
            for (int64_t p = 0; p < panels; p++) GP_FILL(p, x + p * k_pad * NR);
            const int64_t tasks = panels * gm;
#pragma omp for schedule(dynamic, 1)
            for (int64_t t = 0; t < tasks; t++) {
                const int64_t p = t / gm, i = t % gm;
                walked += row_ptr[i + 1] - row_ptr[i];
                gemm_task(p, i, x + p * k_pad * NR, M, N, bm, bk, row_ptr, col_idx, wt, bias,
                          relu, out, L, mrmax);
            }
        }
    }
#undef GP_FILL
    if (visits) *visits += walked;
    return status;
}

/* A linear layer: in [N, K] (rows = batch) -> out [N, M]. */
int gp_linear(const float *in, int64_t N, int64_t K, int64_t M, int64_t gm, int bm, int bk,
              int64_t k_pad, const int32_t *row_ptr, const int32_t *col_idx, const float *wt,
              const float *bias, int relu, float *out, int nthreads, int64_t *visits) {
    const gp_weight w = {M, gm, k_pad, bm, bk, row_ptr, col_idx, wt, bias, relu};
    const int64_t panels = (N + NR - 1) / NR;
    float *x = scratch((size_t)(panels * k_pad * NR));
    if (!x) return 1;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t p = 0; p < panels; p++) {
        float *slab = x + p * k_pad * NR;
        for (int64_t k = 0; k < k_pad; k++)
            for (int c = 0; c < NR; c++) {
                const int64_t n = p * NR + c;
                slab[k * NR + c] = (n < N && k < K) ? in[n * K + k] : 0.0f;
            }
    }
    const int64_t walked = gemm_all(&w, x, N, out, 1, nthreads);
    if (visits) *visits += walked;
    return 0;
}
