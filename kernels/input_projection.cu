// The input projection of one layer, hoisted out of the recurrence:
//     y[t*B + b, :] = x[t, b, :] · W_ihᵀ + b_ih     for every t and b at once,
// with both directions' W_ih stacked into one [D*G*H, K] matrix, so one
// launch per layer does what cuDNN's per-step path does T times.
//
// Napkin math (mid: T=100, B=64, K=256, N=2048): 3.4 GFLOP, 2·6.4k·256·4 B in;
// compute-bound and tiny next to the recurrence's T dependent steps, so a
// plain 64×64 smem-tiled SGEMM (no tensor cores: f32 means f32, DESIGN §2)
// is enough (rnn_gemm_tile in common.cuh).

#include "common.cuh"

// The x row of output row m (t = m / B, b = m % B).
__device__ __forceinline__ long long projection_x_row(const ProjectionParams& p, int m) {
    if (!p.x_batch_first) return m;
    const int t = m / p.batch, b = m % p.batch;
    return (long long)b * p.seq_len + t;
}

// Launch as rnn_gemm_tile says (common.cuh).
RNN_KERNEL(rnn_input_projection_f32, ProjectionParams) {
    rnn_gemm_tile(
        p.rows, p.cols, p.depth,
        [&](int m, int k) { return p.x[projection_x_row(p, m) * p.depth + k]; },
        [&](int n, int k) { return p.w[(long long)n * p.depth + k]; },
        [&](int m, int n, float sum) { p.y[(long long)m * p.cols + n] = sum + (p.bias ? p.bias[n] : 0.0f); });
}
