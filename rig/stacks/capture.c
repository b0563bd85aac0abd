/* The rig's capture kernel for CPU rows: one pass over each row of float32 logits gives its maximum, its
 * log-sum-exp and its exact top-K, ordered by (logit descending, token id ascending).
 *
 * rig/stacks/native.py compiles this file once per machine (cc -O3 -march=native -ffp-contract=off) into the user's
 * cache and loads it with ctypes; rig/stacks/capture.py calls it for float32 rows on the CPU and falls back to its
 * torch form anywhere else. The module docstring of capture.py says what is recorded; this file says how.
 * rig_token_logprobs gives the logprob of each row's chosen token, one step later, from the same shift and rel.
 *
 * One pass, row by row, in units of 64 logits:
 *   - Top-K by threshold: tau is the K-th value kept so far. A unit whose logits are all <= tau (the common case once
 *     K are kept) costs four vector compares; a logit above tau is inserted into the sorted list of K. Logits arrive
 *     in ascending token id, so a logit equal to the K-th kept one never displaces it: ties go to the lower id.
 *   - The maximum is the list's first entry. The sum of exp(x - m) is taken against the running maximum m, as
 *     2^(x log2 e - round(m log2 e)): one fmaf per logit, and the offset round(m log2 e) - m log2 e is taken out at
 *     the end exactly (in double). When a unit raises m, the sums so far are rescaled (a few times per row, early).
 *   - 2^y is evaluated in float32 with explicit fmaf (a degree-6 minimax polynomial, relative error 2e-9 before
 *     rounding) and accumulated in 16 float lanes over 256 logits, then in 16 double lanes. The lane structure is
 *     fixed in the code, not by the vector width, and -ffp-contract=off keeps the compiler from fusing anything
 *     else: a row gives the same bits alone or in any batch, on any thread split, and on any CPU with FMA (the
 *     final log and the rare rescale go through the C library's log and exp2).
 *   - Logits more than 86 below m count as 2^-125 = 2.4e-38 instead of their smaller value: invisible next to the
 *     row's top term, which is 1. -inf logits (masked tokens) count the same.
 * A row with a NaN, or whose maximum is infinite, is reported back (the return value counts them) and its outputs
 * are not meaningful: the caller takes the torch form for the batch, which gives NaN as torch's log_softmax does.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define LANES 16
#define UNIT 64
#define FLUSH 256  /* logits per float lane group before it is added into the double lanes */

static const float LOG2E = 1.44269504088896341f;

/* 2^y for y <= 0 (y below -125 counts as -125). Reduction y = n + f, n = round(y), |f| <= 1/2 (exact); 2^f by a
 * degree-6 minimax polynomial (relative error 2e-9 before rounding); 2^n built in the exponent field. */
static inline float pow2_nonpositive(float y) {
    const float magic = 12582912.0f + 127.0f; /* 1.5 * 2^23 + bias: t's low mantissa bits hold n + 127 */
    float yc = y > -125.0f ? y : -125.0f;    /* also maps -inf and NaN to -125 */
    float t = yc + magic;
    float n = t - magic;
    float f = yc - n;
    float p = 1.5353361959569156e-4f;
    p = fmaf(p, f, 1.3398875016719103e-3f);
    p = fmaf(p, f, 9.61843691766262e-3f);
    p = fmaf(p, f, 5.5503323674201965e-2f);
    p = fmaf(p, f, 2.4022647738456726e-1f);
    p = fmaf(p, f, 6.931471824645996e-1f);
    p = fmaf(p, f, 1.0f);
    uint32_t bits; /* unsigned: the bits shifted out of the top are dropped, as intended, without overflow */
    memcpy(&bits, &t, 4);
    bits <<= 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* Insert (q, id) into vals/ids, sorted by (value desc, id asc), holding *count <= k entries. */
static inline void insert(float q, int32_t id, int64_t k, int64_t *count, float *vals, int32_t *ids) {
    if (*count == k && !(q > vals[k - 1])) return;
    int64_t i = *count < k ? (*count)++ : k - 1;
    while (i > 0 && q > vals[i - 1]) {
        vals[i] = vals[i - 1];
        ids[i] = ids[i - 1];
        i--;
    }
    vals[i] = q;
    ids[i] = id;
}

/* Bit i set: logit p[i] is above tau, or NaN. */
static inline uint64_t above(const float *p, int64_t n, float tau) {
#ifdef __AVX512F__
    if (n == UNIT) {
        __m512 t = _mm512_set1_ps(tau);
        return (uint64_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(p), t, _CMP_NLE_UQ) |
               (uint64_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(p + 16), t, _CMP_NLE_UQ) << 16 |
               (uint64_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(p + 32), t, _CMP_NLE_UQ) << 32 |
               (uint64_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(p + 48), t, _CMP_NLE_UQ) << 48;
    }
#elif defined(__AVX2__)
    if (n == UNIT) {
        __m256 t = _mm256_set1_ps(tau);
        uint64_t g = 0;
        for (int i = 0; i < UNIT; i += 8)
            g |= (uint64_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + i), t, _CMP_NLE_UQ)) << i;
        return g;
    }
#endif
    uint64_t g = 0;
    for (int64_t i = 0; i < n; i++) g |= (uint64_t)!(p[i] <= tau) << i;
    return g;
}

/* One row: returns 0, or 1 when the row has a NaN or an infinite maximum (its outputs then meaningless). */
static int row(const float *x, int64_t v, int64_t k, float *vals, int32_t *ids, float *shift, float *rel) {
    int64_t count = 0;
    float tau = -INFINITY, m = -INFINITY;
    float neg_mlog2e = 0.0f; /* -round(m log2 e): each term is 2^(x log2 e - round(m log2 e)), one fmaf */
    double dacc[LANES] = {0};
    for (int64_t c0 = 0; c0 < v; c0 += FLUSH) {
        int64_t c1 = c0 + FLUSH < v ? c0 + FLUSH : v;
        float acc[LANES] = {0};
        for (int64_t j = c0; j < c1; j += UNIT) {
            const float *p = x + j;
            int64_t n = c1 - j < UNIT ? c1 - j : UNIT;
            uint64_t g = above(p, n, tau);
            if (g) {
                while (g) {
                    int i = __builtin_ctzll(g);
                    g &= g - 1;
                    if (p[i] != p[i]) return 1;
                    if (p[i] > tau) {
                        insert(p[i], (int32_t)(j + i), k, &count, vals, ids);
                        if (count == k) tau = vals[k - 1];
                    }
                }
                if (vals[0] > m) {
                    if (isinf(vals[0])) return 1;
                    float neg_new = -(vals[0] * LOG2E);
                    /* the sums so far are against the old rounded m log2 e: rescale them to the new one */
                    double f = m > -INFINITY ? exp2((double)neg_new - (double)neg_mlog2e) : 0.0;
                    for (int l = 0; l < LANES; l++) {
                        acc[l] *= (float)f;
                        dacc[l] *= f;
                    }
                    m = vals[0];
                    neg_mlog2e = neg_new;
                }
            }
            if (n == UNIT) {
                for (int u = 0; u < UNIT; u += LANES)
                    for (int l = 0; l < LANES; l++) acc[l] += pow2_nonpositive(fmaf(p[u + l], LOG2E, neg_mlog2e));
            } else {
                for (int64_t i = 0; i < n; i++) acc[i % LANES] += pow2_nonpositive(fmaf(p[i], LOG2E, neg_mlog2e));
            }
        }
        for (int l = 0; l < LANES; l++) dacc[l] += acc[l];
    }
    if (!(m > -INFINITY)) return 1; /* every logit -inf */
    double sum = 0.0;
    for (int l = 0; l < LANES; l++) sum += dacc[l];
    *shift = m;
    /* sum = 2^d * sum(exp(x - m)) with d = m log2 e - round(m log2 e), exactly known in double (24 x 24 bits) */
    double d = (double)m * (double)LOG2E + (double)neg_mlog2e;
    *rel = (float)(log(sum) - d * 0.69314718055994531);
    return 0;
}

typedef struct {
    const float *x;
    int64_t first, last, v, k;
    float *shift, *rel, *top_lp;
    int32_t *top_id;
    int64_t bad;
} job_t;

static void run(job_t *j) {
    float one_val;
    int32_t one_id;
    for (int64_t r = j->first; r < j->last; r++) {
        float *vals = j->k ? j->top_lp + r * j->k : &one_val; /* K = 0 still needs the maximum */
        int32_t *ids = j->k ? j->top_id + r * j->k : &one_id;
        if (row(j->x + r * j->v, j->v, j->k ? j->k : 1, vals, ids, j->shift + r, j->rel + r)) {
            j->bad++;
            continue;
        }
        for (int64_t i = 0; i < j->k; i++) vals[i] = (vals[i] - j->shift[r]) - j->rel[r]; /* LogNorm.logprobs */
    }
}

/* Optional: torch's own OpenMP runtime, handed over by rig.stacks.native (GOMP_parallel and the thread queries of the
 * libgomp or libiomp5 that torch loaded). Rows then go to torch's intra-op threads, which are awake between torch's
 * own parallel regions; threads of our own would compete with them for the same cores. */
typedef void (*gomp_parallel_t)(void (*)(void *), void *, unsigned, unsigned);
static gomp_parallel_t gomp_parallel;
static int (*omp_thread_num)(void), (*omp_num_threads)(void);

void rig_use_openmp(gomp_parallel_t parallel, int (*thread_num)(void), int (*num_threads)(void)) {
    gomp_parallel = parallel;
    omp_thread_num = thread_num;
    omp_num_threads = num_threads;
}

typedef struct {
    job_t all;
    job_t part[64];
} team_t;

static void team_member(void *arg) {
    team_t *team = arg;
    int t = omp_thread_num(), nt = omp_num_threads(); /* the team may be smaller than asked */
    if (t >= 64) return;
    if (nt > 64) nt = 64;
    job_t *j = &team->part[t];
    *j = team->all;
    int64_t rows = team->all.last;
    j->first = rows * t / nt;
    j->last = rows * (t + 1) / nt;
    run(j);
}

/* rows x v float32 logits (contiguous) -> shift[rows], rel[rows] (lse = shift + rel), top_lp[rows, k] (raw
 * logprobs, float32), top_id[rows, k] (int32; v < 2^31). threads > 1 splits the rows among torch's OpenMP threads when
 * rig_use_openmp has handed them over (per-row results do not depend on the split); otherwise one thread. Returns
 * the number of rows it could not take (a NaN or an infinite maximum). */
int64_t rig_capture_rows(const float *x, int64_t rows, int64_t v, int64_t k, int64_t threads, float *shift, float *rel,
                         float *top_lp, int32_t *top_id) {
    job_t all = {x, 0, rows, v, k, shift, rel, top_lp, top_id, 0};
    if (threads > rows) threads = rows;
    if (threads > 1 && gomp_parallel) {
        team_t team;
        memset(&team, 0, sizeof team);
        team.all = all;
        gomp_parallel(team_member, &team, (unsigned)(threads < 64 ? threads : 64), 0);
        int64_t bad = 0;
        for (int t = 0; t < 64; t++) bad += team.part[t].bad;
        return bad;
    }
    run(&all);
    return all.bad;
}

/* The logprobs of one token per row: out[i] = (x[i, tok[i * tok_stride]] - shift[i]) - rel[i], as LogNorm.logprobs.
 * Returns the number of token ids outside [0, v) (their out is NaN). */
int64_t rig_token_logprobs(const float *x, int64_t rows, int64_t v, const int64_t *tok, int64_t tok_stride,
                           const float *shift, const float *rel, float *out) {
    int64_t bad = 0;
    for (int64_t i = 0; i < rows; i++) {
        int64_t t = tok[i * tok_stride];
        if (t < 0 || t >= v) {
            out[i] = NAN;
            bad++;
            continue;
        }
        out[i] = (x[i * v + t] - shift[i]) - rel[i];
    }
    return bad;
}
