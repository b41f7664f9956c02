// The non-recurrent kernels of training: the weight- and input-gradient
// products, the gathers that feed them, layout permutes and dropout. None
// is on the critical path of a step; all are deterministic.

#include "common.cuh"

// C (+)= A·B with A and B addressed by strides, launched as rnn_gemm_tile
// says (common.cuh). Transposed operands are read uncoalesced: these
// products run once per layer, not per step.
RNN_KERNEL(rnn_gemm_f32, GemmParams) {
    rnn_gemm_tile(
        p.m, p.n, p.k,
        [&](int m, int k) { return p.a[m * p.a_m + k * p.a_k]; },
        [&](int n, int k) { return p.b[k * p.b_k + n * p.b_n]; },
        [&](int m, int n, float sum) {
            float* c = p.c + m * p.c_m + n;
            *c = p.accumulate ? *c + sum : sum;
        });
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
