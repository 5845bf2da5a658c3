/* Fused CPU kernels for the models' memory-bound layers: float32, channels-last (NHWC) maps.
 *
 * At 28×28×64 a feature map is 12.8 MB, so on the CPU these layers are bound by memory
 * traffic, not arithmetic: what counts is how many times each map is read or written.
 *
 * - ReLU after 2×2 max-pooling: torch's pooling backward first zero-fills the whole
 *   input-sized gradient, then scatters into it; here every gradient element is written
 *   once, from a one-byte record of which corner of its window held the maximum.
 * - Dropout: torch's CPU dropout draws each element's number from a serial generator and
 *   stores a mask; here each element's keep-or-drop comes from a hash of its index and a
 *   seed, so the draws vectorize and the backward recomputes the mask instead of reading it.
 * - BatchNorm (training mode) followed by ReLU: torch runs BatchNorm, ReLU, ReLU's backward
 *   and BatchNorm's backward as four kernels (13 passes over a map); here the ReLU is folded
 *   into BatchNorm's output and its mask recomputed from the input in the backward (8 passes).
 *
 * Built with -ffp-contract=off, so that `x * scale + shift` rounds the same in the forward
 * and the backward: the backward's ReLU mask is then exactly the forward's.
 * OpenMP here is the runtime torch already loaded (the same libgomp.so.1), so these loops
 * use torch's threads and its thread count. Every kernel gives the same result on every
 * run with the same thread count.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* One window row of 2×2 max-pooling then ReLU, across the c channels: p0..p3 are the
 * window's top-left, top-right, bottom-left and bottom-right pixels. Kept apart from the
 * loops over pixels, with restrict pointers, so that the compiler vectorizes it. */
static inline void pool_pixel(const float *restrict p0, const float *restrict p1, const float *restrict p2,
                              const float *restrict p3, float *restrict y, uint8_t *restrict corner, long c)
{
    for (long k = 0; k < c; k++) {
        float m = p0[k];
        uint8_t a = 0;
        if (p1[k] > m || isnan(p1[k])) { m = p1[k]; a = 1; }
        if (p2[k] > m || isnan(p2[k])) { m = p2[k]; a = 2; }
        if (p3[k] > m || isnan(p3[k])) { m = p3[k]; a = 3; }
        y[k] = m < 0.f ? 0.f : m; /* NaN stays NaN, as with torch.relu */
        corner[k] = a;
    }
}

/* y = relu(maxpool2x2(x)); corner = which of each window's four pixels held the maximum,
 * the first in the order above on ties, as torch's max_pool2d picks it (NaN wins, as there). */
void relu_max_pool_forward(const float *restrict x, float *restrict y, uint8_t *restrict corner,
                           long n, long h, long w, long c)
{
    const long ho = h / 2, wo = w / 2;
#pragma omp parallel for schedule(static)
    for (long row = 0; row < n * ho; row++) {
        const float *top = x + ((row / ho) * h + (row % ho) * 2) * w * c, *bottom = top + w * c;
        for (long j = 0; j < wo; j++) {
            const long at = (row * wo + j) * c;
            pool_pixel(top + 2 * j * c, top + (2 * j + 1) * c, bottom + 2 * j * c, bottom + (2 * j + 1) * c,
                       y + at, corner + at, c);
        }
    }
}

/* One window's gradient: grad_y to the pixel that held the maximum where the ReLU passed it
 * (torch's ReLU backward: 0 where y <= 0), 0 to the other three. */
static inline void unpool_pixel(const float *restrict grad_y, const float *restrict y, const uint8_t *restrict corner,
                                float *restrict p0, float *restrict p1, float *restrict p2, float *restrict p3, long c)
{
    for (long k = 0; k < c; k++) {
        /* Loaded unconditionally: a conditional load would not vectorize well. */
        const float gv = grad_y[k], g = y[k] <= 0.f ? 0.f : gv;
        const uint8_t a = corner[k];
        p0[k] = a == 0 ? g : 0.f;
        p1[k] = a == 1 ? g : 0.f;
        p2[k] = a == 2 ? g : 0.f;
        p3[k] = a == 3 ? g : 0.f;
    }
}

/* grad_x of relu_max_pool_forward: every element written once, no zero-fill first. */
void relu_max_pool_backward(const float *restrict grad_y, const float *restrict y, const uint8_t *restrict corner,
                            float *restrict grad_x, long n, long h, long w, long c)
{
    const long ho = h / 2, wo = w / 2;
#pragma omp parallel for schedule(static)
    for (long row = 0; row < n * ho; row++) {
        float *top = grad_x + ((row / ho) * h + (row % ho) * 2) * w * c, *bottom = top + w * c;
        for (long j = 0; j < wo; j++) {
            const long at = (row * wo + j) * c;
            unpool_pixel(grad_y + at, y + at, corner + at, top + 2 * j * c, top + (2 * j + 1) * c,
                         bottom + 2 * j * c, bottom + (2 * j + 1) * c, c);
        }
    }
}

/* The per-channel sums below add BLOCK_ROWS rows in float, then the block into double
 * totals: as accurate as summing in double, and ~4× faster here (the float adds vectorize
 * twice as wide and need no conversions). */
#define BLOCK_ROWS 64

static void flush(float *restrict block, double *restrict total, long n)
{
    for (long k = 0; k < n; k++) {
        total[k] += block[k];
        block[k] = 0.f;
    }
}

/* out[k] = Σ over threads of partials[thread][k], added in thread order: with the static
 * schedule each thread always sums the same rows, so the result repeats bit for bit
 * (a critical section would add the threads in whatever order they finish). */
static void add_in_thread_order(const double *restrict partials, int threads, long n, double *restrict out)
{
    memset(out, 0, n * sizeof(double));
    for (int t = 0; t < threads; t++)
        for (long k = 0; k < n; k++) out[k] += partials[t * n + k];
}

/* Per-channel sums of x and x² over the rows of an (m, c) matrix: sums[0..c) and sums[c..2c). */
void channel_sums(const float *restrict x, long m, long c, double *restrict sums)
{
    const int threads = omp_get_max_threads();
    double *partials = calloc(threads * 2 * c, sizeof(double));
#pragma omp parallel num_threads(threads)
    {
        float *restrict s = calloc(2 * c, sizeof(float)), *restrict q = s + c;
        double *restrict total = partials + omp_get_thread_num() * 2 * c;
#pragma omp for schedule(static)
        for (long i = 0; i < m; i++) {
            const float *r = x + i * c;
            for (long k = 0; k < c; k++) {
                s[k] += r[k];
                q[k] += r[k] * r[k];
            }
            if (i % BLOCK_ROWS == BLOCK_ROWS - 1) flush(s, total, 2 * c);
        }
        flush(s, total, 2 * c);
        free(s);
    }
    add_in_thread_order(partials, threads, 2 * c, sums);
    free(partials);
}

/* y = relu(x * scale + shift), per channel: BatchNorm's normalisation and affine map in one. */
void scale_shift_relu(const float *restrict x, float *restrict y, const float *restrict scale,
                      const float *restrict shift, long m, long c)
{
#pragma omp parallel for schedule(static)
    for (long i = 0; i < m; i++) {
        const float *r = x + i * c;
        float *out = y + i * c;
        for (long k = 0; k < c; k++) {
            const float v = r[k] * scale[k] + shift[k];
            out[k] = v < 0.f ? 0.f : v;
        }
    }
}

/* Per-channel sums of g and g·(x - mean), sums[0..c) and sums[c..2c), with g the gradient
 * of y = relu(x·scale + shift) masked by the ReLU as recomputed from x: what BatchNorm's
 * backward reduces over. */
void scale_shift_relu_backward_sums(const float *restrict grad_y, const float *restrict x, const float *restrict scale,
                                    const float *restrict shift, const float *restrict mean, long m, long c,
                                    double *restrict sums)
{
    const int threads = omp_get_max_threads();
    double *partials = calloc(threads * 2 * c, sizeof(double));
#pragma omp parallel num_threads(threads)
    {
        float *restrict s = calloc(2 * c, sizeof(float)), *restrict t = s + c;
        double *restrict total = partials + omp_get_thread_num() * 2 * c;
#pragma omp for schedule(static)
        for (long i = 0; i < m; i++) {
            const float *g = grad_y + i * c, *r = x + i * c;
            for (long k = 0; k < c; k++) {
                const float gk = g[k], gm = r[k] * scale[k] + shift[k] <= 0.f ? 0.f : gk;
                s[k] += gm;
                t[k] += gm * (r[k] - mean[k]);
            }
            if (i % BLOCK_ROWS == BLOCK_ROWS - 1) flush(s, total, 2 * c);
        }
        flush(s, total, 2 * c);
        free(s);
    }
    add_in_thread_order(partials, threads, 2 * c, sums);
    free(partials);
}

/* grad_x = gain · (g - g_mean - (x - mean) · slope), per channel, with g masked as above:
 * BatchNorm's input gradient in training mode, its coefficients computed by the caller. */
void scale_shift_relu_backward_input(const float *restrict grad_y, const float *restrict x, const float *restrict scale,
                                     const float *restrict shift, const float *restrict mean,
                                     const float *restrict gain, const float *restrict g_mean,
                                     const float *restrict slope, float *restrict grad_x, long m, long c)
{
#pragma omp parallel for schedule(static)
    for (long i = 0; i < m; i++) {
        const float *g = grad_y + i * c, *r = x + i * c;
        float *out = grad_x + i * c;
        for (long k = 0; k < c; k++) {
            const float gk = g[k], gm = r[k] * scale[k] + shift[k] <= 0.f ? 0.f : gk;
            out[k] = gain[k] * (gm - g_mean[k] - (r[k] - mean[k]) * slope[k]);
        }
    }
}

/* A well-mixed 32-bit hash (Wellons' "lowbias32", bias ~0.17 of the best known). */
static inline uint32_t mix32(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    h ^= h >> 16;
    return h;
}

/* One block of dropout: elements first..first+count-1. */
static inline void drop_block(const float *restrict x, float *restrict y, long first, long count, uint32_t low,
                              uint32_t high, uint32_t threshold, float scale)
{
    const int32_t bar = (int32_t)(threshold ^ 0x80000000u);
    for (long i = 0; i < count; i++) {
        const uint32_t draw = mix32(mix32((uint32_t)(first + i) ^ low) ^ high);
        /* draw >= threshold, as a signed comparison (sign bits flipped): AVX2 has no unsigned one */
        const int32_t keep = (int32_t)(draw ^ 0x80000000u) >= bar;
        y[i] = (float)keep * scale * x[i]; /* x times the mask, as torch's dropout */
    }
}

/* y = x · scale where the draw of element i (a hash of i and the seed, uniform over 32
 * bits) is at least `dropped`, else 0. The same seed gives the same mask, so the backward
 * is this function applied to the gradient. */
void dropout(const float *restrict x, float *restrict y, long n, uint64_t seed, uint64_t dropped, float scale)
{
    const long block = 4096;
#pragma omp parallel for schedule(static)
    for (long first = 0; first < n; first += block) {
        const long count = n - first < block ? n - first : block;
        drop_block(x + first, y + first, first, count, (uint32_t)seed, (uint32_t)(seed >> 32), (uint32_t)dropped,
                   scale);
    }
}
