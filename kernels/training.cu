// The non-recurrent kernels of training: the weight- and input-gradient
// products, the gathers that feed them, layout permutes and dropout. None
// is on the critical path of a step; all are deterministic.

#include "common.cuh"

#define GEMM_TILE 64
#define GEMM_TILE_K 16
#define GEMM_PAD 4

// grid (ceil(N / 64), ceil(M / 64)), block 256, dynamic smem
// 2 · 16 · (64 + 4) floats. Loads follow the strides, so transposed operands
// are read uncoalesced: these products run once per layer, not per step.
RNN_KERNEL(rnn_gemm_f32, GemmParams) {
    RNN_DYNAMIC_SMEM(float, smem);
    const int stride = GEMM_TILE + GEMM_PAD;
    float* as = smem;                           // [TILE_K][stride]
    float* bs = smem + GEMM_TILE_K * stride;    // [TILE_K][stride]
    const int m0 = blockIdx.y * GEMM_TILE, n0 = blockIdx.x * GEMM_TILE;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < p.k; k0 += GEMM_TILE_K) {
        for (int i = threadIdx.x; i < GEMM_TILE * GEMM_TILE_K; i += 256) {
            const int r = i / GEMM_TILE_K, kk = i % GEMM_TILE_K, k = k0 + kk;
            const int m = m0 + r, n = n0 + r;
            as[kk * stride + r] = (m < p.m && k < p.k) ? p.a[m * p.a_m + k * p.a_k] : 0.0f;
            bs[kk * stride + r] = (n < p.n && k < p.k) ? p.b[k * p.b_k + n * p.b_n] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < GEMM_TILE_K; ++kk) {
            float a[4], b[4];
            for (int i = 0; i < 4; ++i) a[i] = as[kk * stride + ty * 4 + i];
            for (int j = 0; j < 4; ++j) b[j] = bs[kk * stride + tx * 4 + j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty * 4 + i;
        if (m >= p.m) continue;
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx * 4 + j;
            if (n >= p.n) continue;
            float* c = p.c + m * p.c_m + n;
            *c = p.accumulate ? *c + acc[i][j] : acc[i][j];
        }
    }
}

// grid-stride over T*B*D*width elements (width HO for H_PREV, else H).
RNN_KERNEL(rnn_gather_states_f32, GatherParams) {
    const int G = rnn_cell_gates(p.cell), H = p.hidden, HO = p.out_size, D = p.dirs, B = p.batch;
    const int width = p.what == RNN_GATHER_H_PREV ? HO : H;
    const long long total = (long long)p.seq_len * B * D * width;
    const long long gates_size = (long long)p.seq_len * B * D * G * H;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
        const int k = e % width;
        const long long tbd = e / width;
        const int dir = tbd % D, b = (tbd / D) % B, t = tbd / ((long long)D * B);
        const int len = p.lengths ? min(max(p.lengths[b], 0), p.seq_len) : p.seq_len;
        float v = 0.0f;
        if (t < len) {
            const long long gates = ((long long)t * B + b) * D * G * H + (long long)dir * G * H;
            if (p.what == RNN_GATHER_H_FULL) {
                const float c = p.reserve[gates_size + (((long long)t * B + b) * D + dir) * H + k];
                v = p.reserve[gates + 3 * H + k] * tanhf(c);
            } else {
                const int s = dir ? len - 1 - t : t;  // the step that ran at time t
                float h_prev;
                if (s == 0) {
                    h_prev = p.h0 ? p.h0[((long long)dir * B + b) * HO + k] : 0.0f;
                } else {
                    const int t_prev = dir ? t + 1 : t - 1;
                    h_prev = p.y[((long long)t_prev * B + b) * D * HO + (long long)dir * HO + k];
                }
                v = p.what == RNN_GATHER_RESET_H ? p.reserve[gates + k] * h_prev : h_prev;
            }
        }
        p.out[e] = v;
    }
}

RNN_KERNEL(rnn_permute_f32, PermuteParams) {
    const long long total = (long long)p.a * p.b * p.width;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
        const int w = e % p.width;
        const long long ij = e / p.width;
        const int j = ij % p.b, i = ij / p.b;
        p.dst[((long long)j * p.a + i) * p.width + w] = p.src[e];
    }
}

// SplitMix64's finaliser, as src/dropout.rs mixes.
__device__ __forceinline__ unsigned long long rnn_mix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

RNN_KERNEL(rnn_dropout_f32, DropoutParams) {
    const unsigned long long key = rnn_mix(p.seed ^ rnn_mix((unsigned long long)p.layer ^ 0xD1B54A32D192ED03ull));
    const long long total = (long long)p.seq_len * p.batch * p.width;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
        double factor;
        if (p.p >= 1.0) {
            factor = 0.0;
        } else {
            const double u = (double)(rnn_mix(key + (unsigned long long)e * 0x9E3779B97F4A7C15ull) >> 11) * (1.0 / 9007199254740992.0);
            factor = (p.p <= 0.0 || u >= p.p) ? 1.0 / (1.0 - p.p) : 0.0;
        }
        p.dst[e] = p.src[e] * (float)factor;
    }
}
