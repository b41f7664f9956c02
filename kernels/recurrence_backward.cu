// Backpropagation through one layer's recurrence: all timesteps, in reverse,
// in one persistent launch. The mirror of recurrence.cu:
//
// - The same split: a group of CTAs per (direction, batch tile), each CTA
//   owning the same hidden units (and projected outputs) as in the forward.
// - Per step, each CTA turns the gradient of its units' h into the
//   gradients of their gate pre-activations, pointwise, from the gate
//   activations the forward kept (no recomputation): fused, in registers.
//   They go to d_gi / d_gh in global memory for the weight-gradient
//   products (one large GEMM each, after this launch) and to the group's
//   exchange buffer.
// - The recurrent product runs transposed: dh_{t-1} = W_hhᵀ · d_gates. Each
//   CTA keeps the *columns* of W_hh for its own units in shared memory for
//   the whole sequence (W_hhᵀ stationary) and computes its own slice of
//   dh_{t-1} from the whole group's gate gradients, so the carried gradient
//   never leaves the CTA. One group barrier per step (the exchange is double
//   buffered); the LSTM projection and the original GRU need one more.
// - Every sum runs in a fixed order: results are bitwise reproducible.
//
// Launch: as recurrence.cu (grid (ctas_per_group, tiles, D), cooperative
// when ctas_per_group > 1, `barrier` zeroed), shared memory as plan.rs sizes it.

#include "common.cuh"

__device__ __forceinline__ long long state_index(const RecurrenceBackwardParams& p, int t, int b, int dir, int col) {
    const long long row = p.y_batch_first ? (long long)b * p.seq_len + t : (long long)t * p.batch + b;
    return row * (gridDim.z * p.out_size) + (long long)dir * p.out_size + col;
}

template <int CELL>
__device__ __forceinline__ void recurrence_backward(const RecurrenceBackwardParams& p) {
    constexpr int G = CELL == RNN_CELL_LSTM ? 4 : CELL == RNN_CELL_GRU ? 3 : 1;
    const int dir = blockIdx.z, tile = blockIdx.y, cta = blockIdx.x, D = gridDim.z;
    const int H = p.hidden, HO = p.out_size, B = p.batch, GH = G * H;
    const bool projecting = CELL == RNN_CELL_LSTM && p.w_hr != nullptr;
    const bool reset_first = CELL == RNN_CELL_GRU && !p.linear_before_reset;

    const int upc = p.units_per_cta, opc = p.outputs_per_cta, bt = p.batch_tile;
    const int u0 = min(cta * upc, H), U = min(upc, H - u0);
    const int o0 = min(cta * opc, HO), UO = projecting ? min(opc, HO - o0) : 0;
    // The slice of h (HO space) whose gradient this CTA carries.
    const int hs0 = projecting ? o0 : u0, hcount = projecting ? UO : U, hpc = projecting ? opc : upc;
    const int uo_div = max(UO, 1);  // a divisor for loops over BT * UO (UO is 0 when not projecting)
    const int b0 = tile * bt, BT = min(bt, B - b0);
    const int group = dir * gridDim.y + tile;

    // Shared memory, in floats (plan.rs mirrors these sizes).
    RNN_DYNAMIC_SMEM(float, smem);
    const int wt_stride = GH + 1, wr_stride = HO + 1, v_stride = max(GH, HO) + 1;
    float* wt_s = smem;                                                      // [hpc][G*H+1]: W_hh columns
    float* wr_s = wt_s + (p.weights_in_smem ? hpc * wt_stride : 0);          // [upc][HO+1]: W_hr columns
    float* v_s = wr_s + (p.weights_in_smem && projecting ? upc * wr_stride : 0);  // [bt][max(GH,HO)+1]
    float* dh_s = v_s + bt * v_stride;                                       // [bt][hpc] carried dh
    float* dc_s = dh_s + bt * hpc;                                           // [bt][upc] carried dc
    float* direct_s = dc_s + bt * upc;                                       // [bt][upc] dh_prev terms bypassing W_hh
    float* dz_s = direct_s + bt * upc;                                       // [bt][upc] original GRU
    float* hp_s = dz_s + bt * upc;                                           // [bt][upc] original GRU: h_prev
    float* dhf_s = hp_s + bt * upc;                                          // [bt][upc] original GRU: dh
    int* len_s = reinterpret_cast<int*>(dhf_s + bt * upc);                   // [bt]

    const float* w_hh = p.w_hh + (long long)dir * GH * HO;
    const float* w_hr = projecting ? p.w_hr + (long long)dir * HO * H : nullptr;
    if (p.weights_in_smem) {
        for (int i = threadIdx.x; i < hcount * GH; i += blockDim.x) {
            const int k = i / GH, r = i % GH;
            wt_s[k * wt_stride + r] = w_hh[(long long)r * HO + hs0 + k];
        }
        if (projecting)
            for (int i = threadIdx.x; i < U * HO; i += blockDim.x) {
                const int j = i / HO, o = i % HO;
                wr_s[j * wr_stride + o] = w_hr[(long long)o * H + u0 + j];
            }
    }
    // W_hh[r, hs0 + k] and W_hr[o, u0 + j], from shared memory or from L2.
    auto w_col = [&](int k, int r) {
        return p.weights_in_smem ? wt_s[k * wt_stride + r] : w_hh[(long long)r * HO + hs0 + k];
    };
    auto wr_col = [&](int j, int o) {
        return p.weights_in_smem ? wr_s[j * wr_stride + o] : w_hr[(long long)o * H + u0 + j];
    };

    float* xch = p.exchange + (long long)group * RNN_BACKWARD_EXCHANGE_FLOATS(bt, GH, H, HO);
    auto gates_x = [&](int parity) { return xch + parity * bt * GH; };                  // [bt][GH]
    auto dh_x = [&](int parity) { return xch + 2 * bt * GH + parity * bt * HO; };       // [bt][HO]
    auto dn_x = [&](int parity) { return xch + 2 * bt * (GH + HO) + parity * bt * H; }; // [bt][H]
    unsigned int* counter = p.barrier + group * RNN_BARRIER_STRIDE;
    unsigned int epoch = 0;
    auto sync_group = [&]() {
        ++epoch;
        if (p.ctas_per_group > 1) rnn_group_barrier(counter, epoch * p.ctas_per_group);
        else __syncthreads();
    };
    // Stages `width` floats per row of an exchange buffer into v_s.
    auto stage = [&](const float* src, int width) {
        for (int i = threadIdx.x; i < BT * width; i += blockDim.x) {
            const int b = i / width, k = i % width;
            v_s[b * v_stride + k] = rnn_load_l2(src + b * width + k);
        }
        __syncthreads();
    };

    for (int i = threadIdx.x; i < BT * hcount; i += blockDim.x) {
        const int b = i / hcount, k = i % hcount;
        dh_s[b * hpc + k] = p.dh_n ? p.dh_n[((long long)dir * B + b0 + b) * HO + hs0 + k] : 0.0f;
    }
    for (int i = threadIdx.x; i < BT * U; i += blockDim.x) {
        const int b = i / U, j = i % U;
        dc_s[b * upc + j] = (CELL == RNN_CELL_LSTM && p.dc_n) ? p.dc_n[((long long)dir * B + b0 + b) * H + u0 + j] : 0.0f;
    }
    for (int b = threadIdx.x; b < BT; b += blockDim.x)
        len_s[b] = p.lengths ? min(max(p.lengths[b0 + b], 0), p.seq_len) : p.seq_len;
    sync_group();
    int steps = 0;
    for (int b = 0; b < BT; ++b) steps = max(steps, len_s[b]);

    const long long grow = (long long)D * GH;  // a row of d_gi / d_gh / the reserve's gates
    const long long gates_size = (long long)p.seq_len * B * grow;
    // The forward's state before step s of row b (time t_prev), or the initial state.
    auto h_prev_of = [&](int s, int b, int len, int k) -> float {
        if (s == 0) return p.h0 ? p.h0[((long long)dir * B + b0 + b) * HO + k] : 0.0f;
        const int t_prev = dir ? len - s : s - 1;
        return p.y[state_index(p, t_prev, b0 + b, dir, k)];
    };
    auto c_prev_of = [&](int s, int b, int len, int j) -> float {
        if (s == 0) return p.c0 ? p.c0[((long long)dir * B + b0 + b) * H + j] : 0.0f;
        const int t_prev = dir ? len - s : s - 1;
        return p.reserve[gates_size + (((long long)t_prev * B + b0 + b) * D + dir) * H + j];
    };

    for (int s = steps - 1; s >= 0; --s) {
        const int par = s & 1;
        // The gradient of the projected h, full width (LSTM projection).
        if (projecting) {
            for (int i = threadIdx.x; i < BT * UO; i += blockDim.x) {
                const int b = i / uo_div, o = i % uo_div, len = len_s[b];
                if (s >= len) continue;
                const int t = dir ? len - 1 - s : s;
                const float d = dh_s[b * hpc + o] + p.dy[state_index(p, t, b0 + b, dir, o0 + o)];
                dh_x(par)[b * HO + o0 + o] = d;
                p.d_h[((long long)t * B + b0 + b) * D * HO + (long long)dir * HO + o0 + o] = d;
            }
            sync_group();
            stage(dh_x(par), HO);
        }

        // Phase A: own units' gate gradients, pointwise.
        for (int i = threadIdx.x; i < BT * U; i += blockDim.x) {
            const int b = i / U, j = i % U, len = len_s[b], unit = u0 + j;
            if (s >= len) {  // past the end: no gradient
                const long long row = ((long long)s * B + b0 + b) * grow + (long long)dir * GH + unit;
                for (int g = 0; g < G; ++g) p.d_gi[row + g * H] = p.d_gh[row + g * H] = 0.0f;
                continue;
            }
            const int t = dir ? len - 1 - s : s;
            const long long row = ((long long)t * B + b0 + b) * grow + (long long)dir * GH + unit;
            const float* act = p.reserve + row;  // the gate activations, at act[g * H]
            float dh;  // gradient of this unit's h before any projection
            if (projecting) {
                dh = 0.0f;
                for (int o = 0; o < HO; ++o) dh = fmaf(wr_col(j, o), v_s[b * v_stride + o], dh);
            } else {
                dh = dh_s[b * hpc + j] + p.dy[state_index(p, t, b0 + b, dir, unit)];
            }
            float* xg = gates_x(par) + b * GH;
            if (CELL == RNN_CELL_TANH || CELL == RNN_CELL_RELU) {
                const float a = act[0];
                const float da = CELL == RNN_CELL_TANH ? dh * (1.0f - a * a) : (a > 0.0f ? dh : 0.0f);
                p.d_gi[row] = p.d_gh[row] = xg[unit] = da;
                direct_s[b * upc + j] = 0.0f;
            } else if (CELL == RNN_CELL_LSTM) {
                const float ig = act[0], fg = act[H], gg = act[2 * H], og = act[3 * H];
                const float c = p.reserve[gates_size + (((long long)t * B + b0 + b) * D + dir) * H + unit];
                const float tc = tanhf(c);
                const float dc = dc_s[b * upc + j] + dh * og * (1.0f - tc * tc);
                const float d[4] = {dc * gg * ig * (1.0f - ig), dc * c_prev_of(s, b, len, unit) * fg * (1.0f - fg),
                                    dc * ig * (1.0f - gg * gg), dh * tc * og * (1.0f - og)};
                for (int g = 0; g < 4; ++g) p.d_gi[row + g * H] = p.d_gh[row + g * H] = xg[g * H + unit] = d[g];
                dc_s[b * upc + j] = dc * fg;
                direct_s[b * upc + j] = 0.0f;
            } else {  // GRU
                const float r = act[0], z = act[H], n = act[2 * H];
                const float h_prev = h_prev_of(s, b, len, unit);
                const float dn = dh * (1.0f - z) * (1.0f - n * n);
                const float dz = dh * (h_prev - n) * z * (1.0f - z);
                if (reset_first) {
                    // r's gradient needs W_hnᵀ·dn from the whole group: phase A2.
                    dn_x(par)[b * H + unit] = dn;
                    dz_s[b * upc + j] = dz;
                    hp_s[b * upc + j] = h_prev;
                    dhf_s[b * upc + j] = dh;
                } else {
                    const float ghn = p.reserve[gates_size + (((long long)t * B + b0 + b) * D + dir) * H + unit];
                    const float dr = dn * ghn * r * (1.0f - r);
                    p.d_gi[row] = p.d_gh[row] = xg[unit] = dr;
                    p.d_gi[row + H] = p.d_gh[row + H] = xg[H + unit] = dz;
                    p.d_gi[row + 2 * H] = dn;
                    p.d_gh[row + 2 * H] = xg[2 * H + unit] = dn * r;
                    direct_s[b * upc + j] = dh * z;
                }
            }
        }

        // Phase A2 (original GRU): d(r⊙h) = W_hnᵀ·dn, then r's gradient.
        const int recurrent_rows = reset_first ? 2 * H : GH;
        if (reset_first) {
            sync_group();
            stage(dn_x(par), H);
            for (int i = threadIdx.x; i < BT * U; i += blockDim.x) {
                const int b = i / U, j = i % U, len = len_s[b], unit = u0 + j;
                if (s >= len) continue;
                const int t = dir ? len - 1 - s : s;
                const long long row = ((long long)t * B + b0 + b) * grow + (long long)dir * GH + unit;
                float d_rh = 0.0f;
                for (int m = 0; m < H; ++m) d_rh = fmaf(w_col(j, 2 * H + m), v_s[b * v_stride + m], d_rh);
                const float r = p.reserve[row], z = p.reserve[row + H];
                const float dr = d_rh * hp_s[b * upc + j] * r * (1.0f - r);
                const float dz = dz_s[b * upc + j], dn = v_s[b * v_stride + unit];
                float* xg = gates_x(par) + b * GH;
                p.d_gi[row] = p.d_gh[row] = xg[unit] = dr;
                p.d_gi[row + H] = p.d_gh[row + H] = xg[H + unit] = dz;
                p.d_gi[row + 2 * H] = p.d_gh[row + 2 * H] = dn;
                direct_s[b * upc + j] = dhf_s[b * upc + j] * z + d_rh * r;
            }
        }

        // Phase B: own slice of dh_{t-1} = W_hhᵀ·d_gates (+ direct terms).
        sync_group();
        stage(gates_x(par), GH);
        for (int i = threadIdx.x; i < BT * hcount; i += blockDim.x) {
            const int b = i / hcount, k = i % hcount;
            if (s >= len_s[b]) continue;
            float acc = 0.0f;
            for (int r = 0; r < recurrent_rows; ++r) acc = fmaf(w_col(k, r), v_s[b * v_stride + r], acc);
            dh_s[b * hpc + k] = acc + (projecting ? 0.0f : direct_s[b * upc + k]);
        }
        __syncthreads();
    }

    // Timesteps past every row's end get no gradient either.
    for (int t = steps; t < p.seq_len; ++t)
        for (int i = threadIdx.x; i < BT * U; i += blockDim.x) {
            const long long row = ((long long)t * B + b0 + i / U) * grow + (long long)dir * GH + u0 + i % U;
            for (int g = 0; g < G; ++g) p.d_gi[row + g * H] = p.d_gh[row + g * H] = 0.0f;
        }
    if (projecting)
        for (int i = threadIdx.x; i < BT * UO; i += blockDim.x) {
            const int b = i / uo_div, o = i % uo_div;
            for (int s = len_s[b]; s < p.seq_len; ++s)
                p.d_h[((long long)s * B + b0 + b) * D * HO + (long long)dir * HO + o0 + o] = 0.0f;
        }

    for (int i = threadIdx.x; i < BT * hcount; i += blockDim.x) {
        const int b = i / hcount, k = i % hcount;
        p.dh0[((long long)dir * B + b0 + b) * HO + hs0 + k] = dh_s[b * hpc + k];
    }
    if (CELL == RNN_CELL_LSTM && p.dc0)
        for (int i = threadIdx.x; i < BT * U; i += blockDim.x) {
            const int b = i / U, j = i % U;
            p.dc0[((long long)dir * B + b0 + b) * H + u0 + j] = dc_s[b * upc + j];
        }
}

RNN_KERNEL(rnn_recurrence_backward_tanh_f32, RecurrenceBackwardParams) { recurrence_backward<RNN_CELL_TANH>(p); }
RNN_KERNEL(rnn_recurrence_backward_relu_f32, RecurrenceBackwardParams) { recurrence_backward<RNN_CELL_RELU>(p); }
RNN_KERNEL(rnn_recurrence_backward_lstm_f32, RecurrenceBackwardParams) { recurrence_backward<RNN_CELL_LSTM>(p); }
RNN_KERNEL(rnn_recurrence_backward_gru_f32, RecurrenceBackwardParams) { recurrence_backward<RNN_CELL_GRU>(p); }
