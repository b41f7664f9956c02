// The input projection of one layer, hoisted out of the recurrence:
//     y[t*B + b, :] = x[t, b, :] · W_ihᵀ + b_ih     for every t and b at once,
// with both directions' W_ih stacked into one [D*G*H, K] matrix, so one
// launch per layer does what cuDNN's per-step path does T times.
//
// Napkin math (mid: T=100, B=64, K=256, N=2048): 3.4 GFLOP, 2·6.4k·256·4 B in;
// compute-bound and tiny next to the recurrence's T dependent steps, so a
// plain 64×64 smem-tiled SGEMM (no tensor cores: f32 means f32, DESIGN §2)
// is enough. Each of 256 threads owns a 4×4 block of outputs and sums its
// products in k order: results are deterministic.

#include "common.cuh"

#define PROJ_TILE_M 64
#define PROJ_TILE_N 64
#define PROJ_TILE_K 16
#define PROJ_PAD 4
#define PROJ_THREADS 256

// The x row of output row m (t = m / B, b = m % B).
__device__ __forceinline__ long long projection_x_row(const ProjectionParams& p, int m) {
    if (!p.x_batch_first) return m;
    const int t = m / p.batch, b = m % p.batch;
    return (long long)b * p.seq_len + t;
}

// grid (ceil(N / 64), ceil(M / 64)), block 256, dynamic smem
// 2 · PROJ_TILE_K · (64 + PROJ_PAD) floats.
RNN_KERNEL(rnn_input_projection_f32, ProjectionParams) {
    RNN_DYNAMIC_SMEM(float, smem);
    const int stride = PROJ_TILE_M + PROJ_PAD;
    float* xs = smem;                          // [TILE_K][stride]: x tile, k-major
    float* ws = smem + PROJ_TILE_K * stride;   // [TILE_K][stride]: w tile, k-major
    const int m0 = blockIdx.y * PROJ_TILE_M, n0 = blockIdx.x * PROJ_TILE_N;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < p.depth; k0 += PROJ_TILE_K) {
        // Consecutive threads read consecutive k of one row: coalesced.
        for (int i = threadIdx.x; i < PROJ_TILE_M * PROJ_TILE_K; i += PROJ_THREADS) {
            const int r = i / PROJ_TILE_K, kk = i % PROJ_TILE_K, k = k0 + kk;
            const int m = m0 + r, n = n0 + r;
            xs[kk * stride + r] = (m < p.rows && k < p.depth) ? p.x[projection_x_row(p, m) * p.depth + k] : 0.0f;
            ws[kk * stride + r] = (n < p.cols && k < p.depth) ? p.w[(long long)n * p.depth + k] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < PROJ_TILE_K; ++kk) {
            float a[4], b[4];
            for (int i = 0; i < 4; ++i) a[i] = xs[kk * stride + ty * 4 + i];
            for (int j = 0; j < 4; ++j) b[j] = ws[kk * stride + tx * 4 + j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }

    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty * 4 + i;
        if (m >= p.rows) continue;
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx * 4 + j;
            if (n < p.cols) p.y[(long long)m * p.cols + n] = acc[i][j] + (p.bias ? p.bias[n] : 0.0f);
        }
    }
}
