/* Fused bfloat16 GEMM + running minimum for the memory-bank search (AVX-512 BF16).

   torch's bf16 GEMM writes a score for every (query, bank row) pair (75 MB per 224 px image
   against a 47.8k-row bank) and a second pass reads them back to pick candidates. This kernel
   keeps, for every query and every lane l of a 32-row tile, the smallest score over the rows
   t * 32 + l in registers and memory the size of the queries alone, so the scores are never
   written. The caller re-ranks the 32 rows it returns per query in float32 (search.py).

   Built by native.py on first use with the system C compiler and -fopenmp. Loaded into a process
   where torch has already loaded its libgomp.so.1, it shares torch's OpenMP threads: a second
   runtime's threads would compete with torch's spinning ones (30% slower on 2 cores). */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

#define NQ 12       /* queries per register tile: 12 x 2 accumulators + 2 bank vectors + 1 broadcast */
#define TILE 32     /* bank rows per register tile: two vectors of 16 float lanes */
#define CHUNK 32    /* bank tiles (256 KB at K = 128) streamed through L2 per pass over a query block */
#define QBLOCK 64   /* query tiles (192 KB at K = 128) that stay in L2 while a bank chunk passes */

int mvad_kernel_version(void) { return 2; }

static inline void tile_kernel(const __m512bh *restrict b, const uint32_t *restrict q, int64_t k2,
                               __m512 n0, __m512 n1, __m512i tile, float *restrict best,
                               int32_t *restrict idx) {
    __m512 a[NQ][2];
    for (int j = 0; j < NQ; j++) {
        a[j][0] = _mm512_setzero_ps();
        a[j][1] = _mm512_setzero_ps();
    }
    for (int64_t p = 0; p < k2; p++) {
        __m512bh b0 = b[2 * p], b1 = b[2 * p + 1];
        const uint32_t *qp = q + p * NQ;
        for (int j = 0; j < NQ; j++) {
            __m512bh v = (__m512bh)_mm512_set1_epi32((int)qp[j]);
            a[j][0] = _mm512_dpbf16_ps(a[j][0], b0, v);
            a[j][1] = _mm512_dpbf16_ps(a[j][1], b1, v);
        }
    }
    for (int j = 0; j < NQ; j++) {
        float *bj = best + j * TILE;
        int32_t *ij = idx + j * TILE;
        __m512 s0 = _mm512_add_ps(a[j][0], n0), s1 = _mm512_add_ps(a[j][1], n1);
        __m512 o0 = _mm512_loadu_ps(bj), o1 = _mm512_loadu_ps(bj + 16);
        __mmask16 m0 = _mm512_cmp_ps_mask(s0, o0, _CMP_LT_OQ);
        __mmask16 m1 = _mm512_cmp_ps_mask(s1, o1, _CMP_LT_OQ);
        _mm512_storeu_ps(bj, _mm512_mask_mov_ps(o0, m0, s0));
        _mm512_storeu_ps(bj + 16, _mm512_mask_mov_ps(o1, m1, s1));
        _mm512_storeu_si512(ij, _mm512_mask_mov_epi32(_mm512_loadu_si512(ij), m0, tile));
        _mm512_storeu_si512(ij + 16, _mm512_mask_mov_epi32(_mm512_loadu_si512(ij + 16), m1, tile));
    }
}

/* bank:    [tiles][k2][2][16][2] bf16: tile t, column pair p, half h holds rows t*32 + h*16 + (0..15)
   norms:   [tiles * 32] float32 squared norms of those rows (padding rows: 1e30, never the minimum)
   queries: [qtiles][k2][NQ] bf16 pairs of -2 (q - centre), NQ queries interleaved per pair
   best, idx: [qtiles * NQ][32]; per query i and lane l this writes best[i][l] = the smallest
   norms[t*32+l] - 2 x.q over the tiles t, and idx[i][l] = the first t that gives it.
   nthreads OpenMP threads take contiguous ranges of query tiles. */
void mvad_bf16_lanemin(const void *bank, const float *norms, int64_t tiles, const uint32_t *queries,
                       int64_t qtiles, int64_t k2, float *best, int32_t *idx, int nthreads) {
    const __m512bh *rows = (const __m512bh *)bank;
#pragma omp parallel num_threads(nthreads)
    {
        int64_t nt = omp_get_num_threads(), me = omp_get_thread_num();
        int64_t lo = qtiles * me / nt, hi = qtiles * (me + 1) / nt;
        for (int64_t i = lo * NQ * TILE; i < hi * NQ * TILE; i++) {
            best[i] = __builtin_inff();
            idx[i] = 0;
        }
        for (int64_t qb = lo; qb < hi; qb += QBLOCK) {
            int64_t qe = qb + QBLOCK < hi ? qb + QBLOCK : hi;
            for (int64_t c = 0; c < tiles; c += CHUNK) {
                int64_t ce = c + CHUNK < tiles ? c + CHUNK : tiles;
                for (int64_t t = c; t < ce; t++) {
                    __m512 n0 = _mm512_loadu_ps(norms + t * TILE), n1 = _mm512_loadu_ps(norms + t * TILE + 16);
                    __m512i tile = _mm512_set1_epi32((int)t);
                    for (int64_t qt = qb; qt < qe; qt++)
                        tile_kernel(rows + t * k2 * 2, queries + qt * k2 * NQ, k2, n0, n1, tile,
                                    best + qt * NQ * TILE, idx + qt * NQ * TILE);
                }
            }
        }
    }
}

static int64_t lower_bound(const int32_t *a, int64_t n, int64_t v) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (a[mid] < v) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* The same minima over the tiles of the lists each query probes (an inverted file).
   list_tile: [nlist + 1]: list l owns bank tiles list_tile[l] .. list_tile[l+1]-1
   probe_ptr: [nlist + 1], probe_q: the queries probing list l are probe_q[probe_ptr[l] ..
              probe_ptr[l+1]-1], ascending
   queries:   [nq][k2] bf16 pairs of -2 (q - centre), one query a row
   best, idx: [nq][32] as above; idx -1 where a lane saw no row. Thread w owns the queries
   nq*w/n .. nq*(w+1)/n - 1 and gathers those probing a list into register tiles. */
void mvad_bf16_lanemin_lists(const void *bank, const float *norms, const int64_t *list_tile, int64_t nlist,
                             const int64_t *probe_ptr, const int32_t *probe_q, const uint32_t *queries,
                             int64_t nq, int64_t k2, float *best, int32_t *idx, int nthreads) {
    const __m512bh *rows = (const __m512bh *)bank;
#pragma omp parallel num_threads(nthreads)
    {
        int64_t nt = omp_get_num_threads(), me = omp_get_thread_num();
        int64_t lo = nq * me / nt, hi = nq * (me + 1) / nt;
        for (int64_t i = lo * TILE; i < hi * TILE; i++) {
            best[i] = __builtin_inff();
            idx[i] = -1;
        }
        enum { CAP = QBLOCK * NQ };
        uint32_t *qbuf = aligned_alloc(64, (size_t)CAP * k2 * sizeof(uint32_t) + 64);
        float *lbest = aligned_alloc(64, (size_t)CAP * TILE * sizeof(float));
        int32_t *lidx = aligned_alloc(64, (size_t)CAP * TILE * sizeof(int32_t));
        int64_t lists = qbuf && lbest && lidx ? nlist : 0;  /* out of memory: idx stays -1, the caller refuses */
        for (int64_t l = 0; l < lists; l++) {
            const int32_t *ids = probe_q + probe_ptr[l];
            int64_t m = probe_ptr[l + 1] - probe_ptr[l];
            int64_t a = lower_bound(ids, m, lo), b = lower_bound(ids, m, hi);
            for (int64_t s = a; s < b; s += CAP) {
                int64_t cnt = b - s < CAP ? b - s : CAP, qtiles = (cnt + NQ - 1) / NQ;
                for (int64_t j = 0; j < qtiles * NQ; j++) {
                    uint32_t *dst = qbuf + (j / NQ) * k2 * NQ + j % NQ;
                    if (j < cnt) {
                        const uint32_t *src = queries + (int64_t)ids[s + j] * k2;
                        for (int64_t p = 0; p < k2; p++) dst[p * NQ] = src[p];
                        for (int e = 0; e < TILE; e++) {
                            lbest[j * TILE + e] = best[(int64_t)ids[s + j] * TILE + e];
                            lidx[j * TILE + e] = idx[(int64_t)ids[s + j] * TILE + e];
                        }
                    } else {
                        for (int64_t p = 0; p < k2; p++) dst[p * NQ] = 0;
                        for (int e = 0; e < TILE; e++) { lbest[j * TILE + e] = __builtin_inff(); lidx[j * TILE + e] = -1; }
                    }
                }
                for (int64_t t = list_tile[l]; t < list_tile[l + 1]; t++) {
                    __m512 n0 = _mm512_loadu_ps(norms + t * TILE), n1 = _mm512_loadu_ps(norms + t * TILE + 16);
                    __m512i tile = _mm512_set1_epi32((int)t);
                    for (int64_t qt = 0; qt < qtiles; qt++)
                        tile_kernel(rows + t * k2 * 2, qbuf + qt * k2 * NQ, k2, n0, n1, tile,
                                    lbest + qt * NQ * TILE, lidx + qt * NQ * TILE);
                }
                for (int64_t j = 0; j < cnt; j++)
                    for (int e = 0; e < TILE; e++) {
                        best[(int64_t)ids[s + j] * TILE + e] = lbest[j * TILE + e];
                        idx[(int64_t)ids[s + j] * TILE + e] = lidx[j * TILE + e];
                    }
            }
        }
        free(qbuf);
        free(lbest);
        free(lidx);
    }
}
