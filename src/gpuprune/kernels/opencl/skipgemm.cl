// gpuprune skip-GEMM: Out[M, N] = W[M, K] x X[K, N] for Conv2d (implicit GEMM) and Linear.
//
// One source, three variants chosen by VARIANT (0 dense, 1 tile-skip, 2 SIMD-skip). Tile
// parameters come in as -D defines from the Target, as CLBlast's XGEMM does; the defaults below
// only make the file compile on its own.
//
// GEMM view: M = output channels, K = C_in*KH*KW in (kh, kw, c) order (gemm.K_ORDER),
// N = batch*H_out*W_out.
// X is never materialised (implicit im2col): element (k, n) is read from the NCHW input through
// a per-k table ktab[k] = (c*H*W + kh*DH*W + kw*DW, kh*DH, kw*DW) and per-column data kept in
// local memory (input base offset and top-left input pixel of column n). A Linear layer is the
// 1x1 convolution of a [B, K, 1, 1] input.
//
//  work-group tile (MWG x NWG of Out), work-items numbered N-fastest:
//      local id = n_thread + NDIMC * m_thread   (get_local_id(0) = n_thread)
//
//            n_thread: 0   1  ...  NDIMC-1   (columns n_thread*NWI .. n_thread*NWI + NWI-1)
//   m_thread 0  rows 0 .. MWI-1
//   m_thread 1  rows MWI .. 2*MWI-1          a SIMD group of SIMD_WIDTH consecutive work-items
//   ...                                      covers SIMD_ROWS contiguous rows (the R of a
//                                            SIMD-group vector; see gpuprune.arch.Target)
//
// Weights arrive packed (gpuprune.kernels.format): values[j] is one kept bm x bk block,
// row-major, and row_ptr/col_idx list the kept blocks of each row-block.
//  * dense / tile: blocks are MWG x KWG; a work-group walks the list of its row tile, stages
//    each kept weight block and the matching KWG x NWG input slab in local memory, and never
//    touches a pruned slab. The dense variant walks every block of a fully kept packing.
//  * simd: blocks are SIMD_ROWS x SIMD_K; the work-group walks the union of slabs any of its
//    row-groups keeps (slab_ptr/slab_idx), stages the input slab, and each row-group then walks
//    only its own kept k-vectors inside the slab, reading weights straight from global memory.
//
// Kernel arguments: shapes (M, N, K, C, H, W, W_out, H_out*W_out), stride, padding, relu flag,
// then buffers: x (NCHW), ktab, values, row_ptr, col_idx, slab_ptr, slab_idx (simd only), bias
// (M floats, zeros when the layer has none), out (NCHW), counter (COUNT only).
//
// HALF: x, values and out are float16 in memory (half the traffic), read with vload_half and
// written with vstore_half_rte; staging and accumulation stay float32, like a float16 dense GEMM
// with float32 accumulation. These are core OpenCL 1.2 built-ins, so no cl_khr_fp16 is needed
// (that extension would only add half arithmetic, which the kernel deliberately avoids).
//
// COUNT (instrumentation): counter[row_block * n_tiles + n_tile] counts the blocks a work-group
// (tile) or a SIMD row-group (simd) visited, written by a single work-item.

#ifndef MWG
#define MWG 32
#endif
#ifndef NWG
#define NWG 32
#endif
#ifndef KWG
#define KWG 32
#endif
#ifndef MDIMC
#define MDIMC 8
#endif
#ifndef NDIMC
#define NDIMC 8
#endif
#ifndef SIMD_ROWS
#define SIMD_ROWS 4
#endif
#ifndef SIMD_K
#define SIMD_K 1
#endif
#ifndef VARIANT
#define VARIANT 1
#endif
#ifndef COUNT
#define COUNT 0
#endif
#ifndef HALF
#define HALF 0
#endif
#if HALF
typedef half store_t;
#define LOAD1(p, i) vload_half((i), (p))
#define STORE1(v, p, i) vstore_half_rte((v), (i), (p))
#else
typedef float store_t;
#define LOAD1(p, i) ((p)[i])
#define STORE1(v, p, i) ((p)[i] = (v))
#endif

#ifndef MWI
#define MWI (MWG / MDIMC)
#endif
#ifndef NWI
#define NWI (NWG / NDIMC)
#endif
#define WGS (MDIMC * NDIMC)

// Each work-item's NWI columns are contiguous, held as NV OpenCL vectors of VN <= 8 floats
// (CPU compilers such as PoCL's then emit SIMD multiply-adds; GPUs read the local slab with wide
// loads). float16 is avoided: PoCL 3.0's LLVM cannot select fma() on it for AVX2 hosts.
#if NWI % 8 == 0
#define VN 8
#elif NWI % 4 == 0
#define VN 4
#elif NWI % 2 == 0
#define VN 2
#else
#define VN 1
#endif
#define NV (NWI / VN)  // vectors per work-item row
#if VN == 8
typedef float8 floatv;
#define LOADV(p) vload8(0, p)
#define STOREV(v, p) vstore8(v, 0, p)
#elif VN == 4
typedef float4 floatv;
#define LOADV(p) vload4(0, p)
#define STOREV(v, p) vstore4(v, 0, p)
#elif VN == 2
typedef float2 floatv;
#define LOADV(p) vload2(0, p)
#define STOREV(v, p) vstore2(v, 0, p)
#else
typedef float floatv;
#define LOADV(p) (*(p))
#define STOREV(v, p) (*(p) = (v))
#endif
#define ROW_GROUPS (MWG / SIMD_ROWS)

// Stage the KWG x NWG input slab starting at k0 into Bls (zeros outside K and the image).
inline void load_slab(__local float* Bls, __global const store_t* restrict x,
                      __global const int4* restrict ktab, __local const int* col_base,
                      __local const int* col_ih, __local const int* col_iw,
                      const int k0, const int K, const int H, const int W, const int lid) {
    for (int i = lid; i < KWG * NWG; i += WGS) {
        const int kk = i / NWG;
        const int nn = i % NWG;
        const int k = k0 + kk;
        float v = 0.0f;
        if (k < K) {
            const int4 t = ktab[k];
            const int ih = col_ih[nn] + t.y;
            const int iw = col_iw[nn] + t.z;
            if ((uint)ih < (uint)H && (uint)iw < (uint)W) {
                v = LOAD1(x, col_base[nn] + t.x);
            }
        }
        Bls[i] = v;
    }
}

__kernel __attribute__((reqd_work_group_size(NDIMC, MDIMC, 1)))
void skip_gemm(const int M, const int N, const int K,
               const int C, const int H, const int W, const int Wo, const int HoWo,
               const int SH, const int SW, const int PH, const int PW, const int relu,
               __global const store_t* restrict x,
               __global const int4* restrict ktab,
               __global const store_t* restrict values,
               __global const int* restrict row_ptr,
               __global const int* restrict col_idx,
               __global const int* restrict slab_ptr,
               __global const int* restrict slab_idx,
               __global const float* restrict bias,
               __global store_t* restrict out,
               __global int* restrict counter) {
    const int n_thread = get_local_id(0);
    const int m_thread = get_local_id(1);
    const int lid = n_thread + NDIMC * m_thread;
    const int nb = get_group_id(0);
    const int mb = get_group_id(1);
    const int n_tiles = get_num_groups(0);

    __local float Bls[KWG * NWG];
    __local int col_base[NWG];  // input offset of column n at (c=0, ih0, iw0)
    __local int col_ih[NWG];    // top-left input row of column n (huge negative when n >= N)
    __local int col_iw[NWG];
    __local int col_out[NWG];   // output offset of column n at m = 0

    // Column data: done once per work-group so the K loop has no divisions by runtime sizes.
    for (int nn = lid; nn < NWG; nn += WGS) {
        const int n = nb * NWG + nn;
        if (n < N) {
            const int b = n / HoWo;
            const int p = n - b * HoWo;
            const int oh = p / Wo;
            const int ow = p - oh * Wo;
            const int ih = oh * SH - PH;
            const int iw = ow * SW - PW;
            col_ih[nn] = ih;
            col_iw[nn] = iw;
            col_base[nn] = b * C * H * W + ih * W + iw;
            col_out[nn] = b * M * HoWo + p;
        } else {
            col_ih[nn] = -(1 << 28);
            col_iw[nn] = -(1 << 28);
            col_base[nn] = 0;
            col_out[nn] = -1;
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    floatv acc[MWI][NV];
    for (int i = 0; i < MWI; i++) {
        for (int v = 0; v < NV; v++) {
            acc[i][v] = (floatv)(0.0f);
        }
    }
    const int row0 = m_thread * MWI;  // first tile row of this work-item

#if VARIANT == 0 || VARIANT == 1
    __local float Als[MWG * KWG];
    const int start = row_ptr[mb];
    const int stop = row_ptr[mb + 1];
    for (int e = start; e < stop; e++) {
#if VARIANT == 0
        const int kb = e - start;
#else
        const int kb = col_idx[e];
#endif
        __global const store_t* blk = values + (size_t)e * (MWG * KWG);
        for (int i = lid; i < MWG * KWG; i += WGS) {
            Als[i] = LOAD1(blk, i);
        }
        load_slab(Bls, x, ktab, col_base, col_ih, col_iw, kb * KWG, K, H, W, lid);
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < KWG; kk++) {
            floatv b[NV];
            for (int v = 0; v < NV; v++) {
                b[v] = LOADV(Bls + kk * NWG + n_thread * NWI + v * VN);
            }
            for (int i = 0; i < MWI; i++) {
                const float a = Als[(row0 + i) * KWG + kk];
                for (int v = 0; v < NV; v++) {
                    acc[i][v] = fma((floatv)(a), b[v], acc[i][v]);
                }
            }
        }
#if COUNT
        if (lid == 0) {
            counter[mb * n_tiles + nb] += 1;
        }
#endif
        barrier(CLK_LOCAL_MEM_FENCE);
    }
#else
    const int group = mb * ROW_GROUPS + row0 / SIMD_ROWS;  // this work-item's SIMD row-group
    const int roff = row0 % SIMD_ROWS;                     // its first row inside the group
    int e = row_ptr[group];
    const int stop = row_ptr[group + 1];
    for (int s = slab_ptr[mb]; s < slab_ptr[mb + 1]; s++) {
        const int k0 = slab_idx[s] * KWG;
        load_slab(Bls, x, ktab, col_base, col_ih, col_iw, k0, K, H, W, lid);
        barrier(CLK_LOCAL_MEM_FENCE);
        // The group's kept k-vectors inside this slab: its list is ascending in k.
        while (e < stop && col_idx[e] * SIMD_K < k0 + KWG) {
            const int kk0 = col_idx[e] * SIMD_K - k0;
            __global const store_t* blk = values + (size_t)e * (SIMD_ROWS * SIMD_K);
            for (int t = 0; t < SIMD_K; t++) {
                floatv b[NV];
                for (int v = 0; v < NV; v++) {
                    b[v] = LOADV(Bls + (kk0 + t) * NWG + n_thread * NWI + v * VN);
                }
                for (int i = 0; i < MWI; i++) {
                    const float a = LOAD1(blk, (roff + i) * SIMD_K + t);
                    for (int v = 0; v < NV; v++) {
                        acc[i][v] = fma((floatv)(a), b[v], acc[i][v]);
                    }
                }
            }
#if COUNT
            if (n_thread == 0 && roff == 0) {
                counter[group * n_tiles + nb] += 1;
            }
#endif
            e++;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
#endif

    // Epilogue: bias and ReLU fused, ragged M/N guarded.
    for (int i = 0; i < MWI; i++) {
        const int m = mb * MWG + row0 + i;
        if (m >= M) {
            break;
        }
        float vs[NWI];
        for (int v = 0; v < NV; v++) {
            floatv r = acc[i][v] + (floatv)(bias[m]);
            if (relu) {
                r = fmax(r, (floatv)(0.0f));
            }
            STOREV(r, vs + v * VN);
        }
        for (int j = 0; j < NWI; j++) {
            const int o = col_out[n_thread * NWI + j];
            if (o >= 0) {
                STORE1(vs[j], out, o + m * HoWo);
            }
        }
    }
}
