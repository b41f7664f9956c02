// The recurrence of one layer, all timesteps in one persistent launch.
//
// Design (DESIGN §3). The input half x·W_ihᵀ + b_ih is already done for all
// timesteps (input_projection.cu); what is left is T dependent steps of
// h_{t-1}·W_hhᵀ and the gate math. Per step the work is small (seed shapes:
// ~1 MFLOP) and latency is what costs, so:
//
// - A *group* of `ctas_per_group` CTAs runs one (direction, batch tile).
//   Grid = (ctas_per_group, batch tiles, directions); both directions and all
//   batch tiles run at once and never wait for each other.
// - Each CTA owns `units_per_cta` hidden units with all G gates of each, so
//   the gate nonlinearities and the cell update are local to one thread, in
//   registers, fused with the product (no gate tensor in memory).
// - Its per-step products are shared out as work items (a block of
//   `rows_per_thread` batch rows, one unit): `k_lanes` lanes of a warp split
//   each item's dot products along k and add them by shuffles (short chains:
//   the step's latency), and each weight a lane loads serves all the rows of
//   its block (fewer shared loads per FMA: the step's throughput).
// - Its slice of W_hh (G·U rows × HO) is loaded into shared memory once and
//   stays there for all T steps (weight-stationary: DRAM is read once per
//   sequence, not per step). Shapes too large for that read W_hh from L2
//   each step instead (weights_in_smem = 0): slower, same answer.
// - Per step the only exchange is h_t: each CTA writes its slice to a double
//   buffer in global memory (L2) and the group meets at a counter barrier.
//   A group of one CTA keeps that buffer in shared memory instead and needs
//   only __syncthreads: no L2 round trip per step. The LSTM projection and the
//   original GRU need a full-width vector mid-step (o⊙tanh c, r⊙h): they
//   exchange it too, a second barrier per step.
// - Variable lengths need no sorting: row b runs steps 0..len_b (the reverse
//   direction at t = len_b-1-s) and past its end keeps its state and writes
//   zeros. Every output element is written exactly once.
//
// Bounds: per step and CTA, G·U·Bt dot products of length HO from shared
// memory ((G + R)/(G·R) shared loads per FMA with R rows per thread), the
// log2(k_lanes) shuffle rounds, one L2 round trip for h, and the barrier.
// The wavefront over layers and the input projection folded in for narrow
// inputs are the next steps, to be measured on a GPU first.
//
// Launch: grid (ctas_per_group, ceil(B / batch_tile), D), any block size
// (a multiple of 32), dynamic shared memory as src/cuda/launch/plan.rs sizes it,
// cooperative whenever ctas_per_group > 1 (the barrier needs the whole group
// resident). `barrier` must be zero at launch.

#include "common.cuh"

template <int CELL>
struct Cell;

template <>
struct Cell<RNN_CELL_TANH> {
    static constexpr int gates = 1;
};
template <>
struct Cell<RNN_CELL_RELU> {
    static constexpr int gates = 1;
};
template <>
struct Cell<RNN_CELL_LSTM> {
    static constexpr int gates = 4;
};
template <>
struct Cell<RNN_CELL_GRU> {
    static constexpr int gates = 3;
};

// Where output element (t, b, col) of direction dir lives.
__device__ __forceinline__ long long output_index(const RecurrenceParams& p, int t, int b, int dir, int col) {
    const long long row = p.y_batch_first ? (long long)b * p.seq_len + t : (long long)t * p.batch + b;
    return row * (gridDim.z * p.out_size) + (long long)dir * p.out_size + col;
}

// Training reserve of a layer: gate activations [T*B, D*G*H] (LSTM i,f,g,o;
// GRU r,z,n; RNN h'), then one H-vector per step [T*B, D, H]: the LSTM's c,
// or the PyTorch GRU's W_hn·h + b_hn. This returns the gates of (t, b, dir).
__device__ __forceinline__ float* x_reserve(const RecurrenceParams& p, int t, int b, int dir, int G) {
    return p.reserve + ((long long)t * p.batch + b) * gridDim.z * G * p.hidden + (long long)dir * G * p.hidden;
}

__device__ __forceinline__ float* reserve_aux(const RecurrenceParams& p, int t, int b, int dir) {
    const long long gates = (long long)p.seq_len * p.batch * gridDim.z * rnn_cell_gates(p.cell) * p.hidden;
    return p.reserve + gates + (((long long)t * p.batch + b) * gridDim.z + dir) * p.hidden;
}

// Dot products of NG weight rows (w + g·gate_stride, g < ngates) with R
// vectors (h + r·h_stride), over k < K. The KL lanes of an aligned lane
// group each take k ≡ lane (mod KL) and add their partial sums by shuffles,
// so every lane of the group ends with the whole sums in acc[g][r]. Each
// weight loaded serves R rows and each h value NG gates: fewer shared loads
// per FMA, the bound of the per-step product. Rows past `rows` repeat the
// last one (their sums are computed and never used).
template <int NG, int R>
__device__ __forceinline__ void group_products(const float* w, long long gate_stride, int ngates, const float* h,
                                               int h_stride, int rows, int K, int KL,
                                               float (&acc)[NG][RNN_MAX_ROWS_PER_THREAD]) {
    const float* hr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) hr[r] = h + min(r, rows - 1) * h_stride;
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
        for (int r = 0; r < RNN_MAX_ROWS_PER_THREAD; ++r) acc[g][r] = 0.0f;
    for (int k = threadIdx.x & (KL - 1); k < K; k += KL) {
        float hk[R];
#pragma unroll
        for (int r = 0; r < R; ++r) hk[r] = hr[r][k];
#pragma unroll
        for (int g = 0; g < NG; ++g) {
            if (g < ngates) {
                const float wk = w[g * gate_stride + k];
#pragma unroll
                for (int r = 0; r < R; ++r) acc[g][r] = fmaf(wk, hk[r], acc[g][r]);
            }
        }
    }
    for (int offset = KL / 2; offset > 0; offset /= 2)
#pragma unroll
        for (int g = 0; g < NG; ++g)
#pragma unroll
            for (int r = 0; r < R; ++r) acc[g][r] += __shfl_xor_sync(0xffffffffu, acc[g][r], offset);
}

// group_products with the row count chosen at run time (p.rows_per_thread).
template <int NG>
__device__ __forceinline__ void products(int R, const float* w, long long gate_stride, int ngates, const float* h,
                                         int h_stride, int rows, int K, int KL,
                                         float (&acc)[NG][RNN_MAX_ROWS_PER_THREAD]) {
    static_assert(RNN_MAX_ROWS_PER_THREAD == 4, "one case per row count");
    switch (R) {
    case 4: group_products<NG, 4>(w, gate_stride, ngates, h, h_stride, rows, K, KL, acc); break;
    case 2: group_products<NG, 2>(w, gate_stride, ngates, h, h_stride, rows, K, KL, acc); break;
    default: group_products<NG, 1>(w, gate_stride, ngates, h, h_stride, rows, K, KL, acc); break;
    }
}

// Calls body(item, writes) for `count` work items, KL lanes per item. Every
// lane of a warp makes the same number of trips, because the shuffles in
// group_products need whole warps: a lane group past the last item repeats
// its warp's first item with writes = false. Only a group's first lane
// writes.
template <typename Body>
__device__ __forceinline__ void for_each_item(int count, int KL, Body&& body) {
    const int per_warp = 32 / KL, lane = threadIdx.x & 31;
    for (int base = (threadIdx.x / 32) * per_warp; base < count; base += (blockDim.x / 32) * per_warp) {
        const int item = base + lane / KL;
        body(item < count ? item : base, item < count && lane % KL == 0);
    }
}

// Copies `rows` rows of `width` floats of the weights into shared memory,
// one warp a row and lanes along it, every copy asynchronous (cp.async): no
// thread waits for a load until all of its copies are issued. The caller
// waits (rnn_copy_async_wait) and synchronises before reading them. `src(r)`
// and `dst(r)` give row r's start.
template <typename Src, typename Dst>
__device__ __forceinline__ void fill_rows(int rows, int width, Src&& src, Dst&& dst) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, warps = blockDim.x / 32;
    for (int r = warp; r < rows; r += warps) {
        const float* from = src(r);
        float* to = dst(r);
        for (int k = lane; k < width; k += 32) rnn_copy_async(to + k, from + k);
    }
}

// LOCAL: a group of one CTA (exchange buffers in shared memory); SMEM_W: W_hh
// (and W_hr) in shared memory. Both known at compile time, so that every
// pointer's memory is known too: shared loads and stores are LDS/STS and
// global ones LDG/STG, never generic loads whose space is found at run time.
template <int CELL, bool LOCAL, bool SMEM_W>
__device__ __forceinline__ void recurrence_body(const RecurrenceParams& p) {
    constexpr int G = Cell<CELL>::gates;
    const int dir = blockIdx.z, tile = blockIdx.y, cta = blockIdx.x, D = gridDim.z;
    const int H = p.hidden, HO = p.out_size, B = p.batch;
    const bool projecting = CELL == RNN_CELL_LSTM && p.w_hr != nullptr;
    const bool reset_first = CELL == RNN_CELL_GRU && !p.linear_before_reset;
    const bool two_phase = projecting || reset_first;

    // This CTA's units, projected outputs and the slice of h it writes.
    const int upc = p.units_per_cta, opc = p.outputs_per_cta, bt = p.batch_tile;
    const int u0 = min(cta * upc, H), U = min(upc, H - u0);
    const int o0 = min(cta * opc, HO), UO = projecting ? min(opc, HO - o0) : 0;
    const int hs0 = projecting ? o0 : u0, hcount = projecting ? UO : U;
    const int b0 = tile * bt, BT = min(bt, B - b0);
    const int group = dir * gridDim.y + tile;

    // A group of one CTA exchanges nothing: its h buffers live in shared memory.
    constexpr bool local = LOCAL;

    // Shared memory, in floats (plan.rs mirrors these sizes).
    RNN_DYNAMIC_SMEM(float, smem);
    // Weight rows are padded (plan.rs) so that the lane groups of a warp read
    // distinct banks; +1 keeps the staged vectors' rows apart.
    const int ws_stride = p.w_stride, w2s_stride = p.w2_stride, vs_stride = H + 1;
    float* w_s = smem;                                                      // [G·upc][w_stride]
    float* w2_s = w_s + (SMEM_W ? G * upc * ws_stride : 0);                 // [opc][w2_stride]
    // Groups of several CTAs stage the exchanged vectors in v_s [bt][H+1];
    // a group of one keeps the exchange buffers themselves here.
    float* v_s = w2_s + (SMEM_W && projecting ? opc * w2s_stride : 0);
    float* c_s = v_s + (local ? RNN_EXCHANGE_FLOATS(bt, H, HO) : bt * vs_stride);  // [bt][upc] cell state
    float* z_s = c_s + bt * upc;                                            // [bt][upc] GRU z
    float* hp_s = z_s + bt * upc;                                           // [bt][upc] GRU h_{t-1}
    int* len_s = reinterpret_cast<int*>(hp_s + bt * upc);                   // [bt]

    // W_hh rows of (gate g, own unit j) at w + g·gate_stride + j·row_stride.
    const float* w_hh = p.w_hh + (long long)dir * G * H * HO;
    const float* w_hr = projecting ? p.w_hr + (long long)dir * HO * H : nullptr;
    if (SMEM_W) {
        // Row (g, j) of the slice: W_hh row g·H + u0 + j. Waited for before
        // the first sync_group below.
        fill_rows(
            G * U, HO, [&](int r) { return w_hh + (long long)((r / U) * H + u0 + r % U) * HO; },
            [&](int r) { return w_s + ((r / U) * upc + r % U) * ws_stride; });
        fill_rows(
            UO, H, [&](int o) { return w_hr + (long long)(o0 + o) * H; }, [&](int o) { return w2_s + o * w2s_stride; });
    }
    const float* w = SMEM_W ? w_s : w_hh + (long long)u0 * HO;
    const long long row_stride = SMEM_W ? ws_stride : HO;
    const long long gate_stride = SMEM_W ? (long long)upc * ws_stride : (long long)H * HO;
    const float* w2 = SMEM_W ? w2_s : (projecting ? w_hr + (long long)o0 * H : nullptr);
    const long long w2_stride = SMEM_W ? w2s_stride : H;
    const float* b_hh = p.b_hh ? p.b_hh + (long long)dir * G * H + u0 : nullptr;

    // Exchange buffers of this group (global, or shared when local), and its barrier.
    float* hbuf = local ? v_s : p.exchange + (long long)group * RNN_EXCHANGE_FLOATS(bt, H, HO);  // [2][bt][HO]
    float* vbuf = hbuf + 2 * bt * HO;                                                             // [bt][H]
    // Exchanged values written by other CTAs must bypass L1; shared ones need no care.
    auto load_exchanged = [&](const float* q) { return local ? *q : rnn_load_l2(q); };
    unsigned int* counter = p.barrier + group * RNN_BARRIER_STRIDE;
    unsigned int epoch = 0;
    auto sync_group = [&]() {
        ++epoch;
        if (local) __syncthreads();
        else rnn_group_barrier(counter, epoch * p.ctas_per_group);
    };

    // Initial state: each CTA reads (and at the end writes) only its own
    // slices, so h_n may alias h0 and c_n c0.
    for (int i = threadIdx.x; i < BT * hcount; i += blockDim.x) {
        const int b = i / hcount, k = hs0 + i % hcount;
        hbuf[b * HO + k] = p.h0 ? p.h0[((long long)dir * B + b0 + b) * HO + k] : 0.0f;
    }
    for (int i = threadIdx.x; i < BT * U; i += blockDim.x) {
        const int b = i / U, j = i % U;
        if (CELL == RNN_CELL_LSTM) c_s[b * upc + j] = p.c0 ? p.c0[((long long)dir * B + b0 + b) * H + u0 + j] : 0.0f;
    }
    // Lengths from a device buffer cannot be checked by the host: clamp them
    // to 0..=T so that no value can make a kernel write out of bounds.
    for (int b = threadIdx.x; b < BT; b += blockDim.x)
        len_s[b] = p.lengths ? min(max(p.lengths[b0 + b], 0), p.seq_len) : p.seq_len;
    if (SMEM_W) rnn_copy_async_wait();
    sync_group();
    // The group runs as many steps as its longest row: every CTA of the group
    // sees the same rows, so all agree on the count (and the barrier epochs).
    int steps = 0;
    for (int b = 0; b < BT; ++b) steps = max(steps, len_s[b]);

    // Work items: (block of RB batch rows, own unit), KL lanes each.
    const int KL = p.k_lanes, RB = p.rows_per_thread, row_blocks = (BT + RB - 1) / RB;
    const long long xp_row = (long long)D * G * H;
    for (int s = 0; s < steps; ++s) {
        const float* h_cur = hbuf + (s & 1) * bt * HO;
        float* h_next = hbuf + ((s + 1) & 1) * bt * HO;
        if (!local) {
            rnn_copy_rows<8>(v_s, vs_stride, h_cur, HO, BT, HO, rnn_load_l2);
            __syncthreads();
        }
        // h_{t-1} of row b at h_rows + b·h_stride.
        const float* h_rows = local ? h_cur : v_s;
        const int h_stride = local ? HO : vs_stride;

        // Phase 1: the gate products of own units from h_{t-1}, and the cell.
        for_each_item(row_blocks * U, KL, [&](int item, bool writes) {
            const int r0 = (item / U) * RB, j = item % U, rows = min(RB, BT - r0);
            constexpr int P1 = (CELL == RNN_CELL_GRU) ? 3 : G;  // the original GRU uses 2 of these 3
            const int phase1_gates = reset_first ? 2 : P1;
            // The step's input projection and b_hh do not depend on h_{t-1}:
            // loaded before the products, their latency hides behind them.
            float xs[RNN_MAX_ROWS_PER_THREAD][G], bias[G];
#pragma unroll
            for (int r = 0; r < RNN_MAX_ROWS_PER_THREAD; ++r) {
                const int b = r0 + min(r, rows - 1), len = len_s[b];
                const bool live = writes && r < rows && s < len;
                const int t = !live ? 0 : dir ? len - 1 - s : s;
                const float* x = p.xp + ((long long)t * B + b0 + b) * xp_row + (long long)dir * G * H + u0 + j;
#pragma unroll
                for (int g = 0; g < G; ++g) xs[r][g] = live ? x[g * H] : 0.0f;
            }
#pragma unroll
            for (int g = 0; g < G; ++g) bias[g] = writes && b_hh ? b_hh[g * H + j] : 0.0f;
            float acc[G][RNN_MAX_ROWS_PER_THREAD];
            products<G>(RB, w + j * row_stride, gate_stride, phase1_gates, h_rows + r0 * h_stride, h_stride, rows, HO,
                        KL, acc);
            if (!writes) return;
            // Row b's cell from its recurrent products (bias not yet added)
            // and its input projection x[g·H] = xr[g].
            auto cell = [&](int b, float (&gate)[G], const float (&xr)[G]) {
                const int len = len_s[b];
                const float* h = h_rows + b * h_stride;
                if (s >= len) {  // finished: keep the state, pad the output
                    if (!two_phase) {
                        h_next[b * HO + u0 + j] = h[u0 + j];
                        p.y[output_index(p, s, b0 + b, dir, u0 + j)] = 0.0f;
                    }
                    return;
                }
                const int t = dir ? len - 1 - s : s;
                if (b_hh)
                    for (int g = 0; g < G; ++g) gate[g] += bias[g];
                const float x[4] = {xr[0], xr[1 % G], xr[2 % G], xr[3 % G]};

                // Training keeps the gate activations (and one auxiliary vector) for backward.
                float* kept = p.reserve ? x_reserve(p, t, b0 + b, dir, G) + u0 + j : nullptr;
                float* kept_aux = p.reserve ? reserve_aux(p, t, b0 + b, dir) + u0 + j : nullptr;
                float h_new = 0.0f;
                if (CELL == RNN_CELL_TANH) {
                    h_new = tanhf(x[0] + gate[0]);
                    if (kept) kept[0] = h_new;
                } else if (CELL == RNN_CELL_RELU) {
                    h_new = fmaxf(x[0] + gate[0], 0.0f);
                    if (kept) kept[0] = h_new;
                } else if (CELL == RNN_CELL_LSTM) {
                    const float ig = rnn_sigmoid(x[0] + gate[0]);
                    const float fg = rnn_sigmoid(x[1] + gate[1 % G]);
                    const float gg = tanhf(x[2] + gate[2 % G]);
                    const float og = rnn_sigmoid(x[3] + gate[3 % G]);
                    const float c = fg * c_s[b * upc + j] + ig * gg;
                    c_s[b * upc + j] = c;
                    h_new = og * tanhf(c);
                    if (kept) {
                        kept[0] = ig, kept[H] = fg, kept[2 * H] = gg, kept[3 * H] = og;
                        kept_aux[0] = c;
                    }
                    if (projecting) {
                        vbuf[b * H + u0 + j] = h_new;
                        return;
                    }
                } else {  // GRU
                    const float r_gate = rnn_sigmoid(x[0] + gate[0]);
                    const float z = rnn_sigmoid(x[1] + gate[1 % G]);
                    const float h_prev = h[u0 + j];
                    if (kept) kept[0] = r_gate, kept[H] = z;
                    if (reset_first) {
                        vbuf[b * H + u0 + j] = r_gate * h_prev;
                        z_s[b * upc + j] = z;
                        hp_s[b * upc + j] = h_prev;
                        return;
                    }
                    const float n = tanhf(x[2] + r_gate * gate[2 % G]);
                    h_new = (1.0f - z) * n + z * h_prev;
                    if (kept) kept[2 * H] = n, kept_aux[0] = gate[2 % G];
                }
                h_next[b * HO + u0 + j] = h_new;
                p.y[output_index(p, t, b0 + b, dir, u0 + j)] = h_new;
            };
            // Constant row indices (a fully unrolled loop), so acc stays in registers.
#pragma unroll
            for (int r = 0; r < RNN_MAX_ROWS_PER_THREAD; ++r) {
                float gate[G];
                for (int g = 0; g < G; ++g) gate[g] = acc[g][r];
                if (r < rows) cell(r0 + r, gate, xs[r]);
            }
        });

        // Phase 2 (LSTM projection, original GRU): a product with the
        // full-width vector the whole group just wrote.
        if (two_phase) {
            sync_group();
            if (!local) {
                rnn_copy_rows<8>(v_s, vs_stride, vbuf, H, BT, H, rnn_load_l2);
                __syncthreads();
            }
            // Rows that finished wrote no vector this step: their products
            // read stale values and are discarded below.
            const float* v_rows = local ? vbuf : v_s;
            const int v_stride = local ? H : vs_stride;
            const int owned = projecting ? UO : U;
            for_each_item(row_blocks * owned, KL, [&](int item, bool writes) {
                const int r0 = (item / owned) * RB, j = item % owned, rows = min(RB, BT - r0), col = hs0 + j;
                const float* wj = projecting ? w2 + j * w2_stride : w + 2 * gate_stride + j * row_stride;
                // The original GRU's n gate input, loaded before the products.
                float xn[RNN_MAX_ROWS_PER_THREAD];
#pragma unroll
                for (int r = 0; r < RNN_MAX_ROWS_PER_THREAD; ++r) {
                    const int b = r0 + min(r, rows - 1), len = len_s[b];
                    const bool live = !projecting && writes && r < rows && s < len;
                    const int t = !live ? 0 : dir ? len - 1 - s : s;
                    const float* x = p.xp + ((long long)t * B + b0 + b) * xp_row + (long long)dir * G * H + u0 + j;
                    xn[r] = live ? x[2 * H] : 0.0f;
                }
                const float bn = !projecting && writes && b_hh ? b_hh[2 * H + j] : 0.0f;
                float acc[1][RNN_MAX_ROWS_PER_THREAD];
                products<1>(RB, wj, 0, 1, v_rows + r0 * v_stride, v_stride, rows, H, KL, acc);
                if (!writes) return;
                auto finish = [&](int b, float product, float x_n) {
                    const int len = len_s[b];
                    if (s >= len) {
                        h_next[b * HO + col] = load_exchanged(h_cur + b * HO + col);
                        p.y[output_index(p, s, b0 + b, dir, col)] = 0.0f;
                        return;
                    }
                    const int t = dir ? len - 1 - s : s;
                    float h_new = product;
                    if (!projecting) {
                        const float n = tanhf(x_n + product + bn);
                        if (p.reserve) x_reserve(p, t, b0 + b, dir, G)[2 * H + u0 + j] = n;
                        const float z = z_s[b * upc + j];
                        h_new = (1.0f - z) * n + z * hp_s[b * upc + j];
                    }
                    h_next[b * HO + col] = h_new;
                    p.y[output_index(p, t, b0 + b, dir, col)] = h_new;
                };
#pragma unroll
                for (int r = 0; r < RNN_MAX_ROWS_PER_THREAD; ++r)
                    if (r < rows) finish(r0 + r, acc[0][r], xn[r]);
            });
        }
        sync_group();
    }

    // Timesteps past every row's end (steps < T) are padding too.
    for (int t = steps; t < p.seq_len; ++t)
        for (int i = threadIdx.x; i < BT * hcount; i += blockDim.x)
            p.y[output_index(p, t, b0 + i / hcount, dir, hs0 + i % hcount)] = 0.0f;

    const float* h_final = hbuf + (steps & 1) * bt * HO;
    for (int i = threadIdx.x; i < BT * hcount; i += blockDim.x) {
        const int b = i / hcount, k = hs0 + i % hcount;
        p.h_n[((long long)dir * B + b0 + b) * HO + k] = load_exchanged(h_final + b * HO + k);
    }
    if (CELL == RNN_CELL_LSTM && p.c_n)
        for (int i = threadIdx.x; i < BT * U; i += blockDim.x) {
            const int b = i / U, j = i % U;
            p.c_n[((long long)dir * B + b0 + b) * H + u0 + j] = c_s[b * upc + j];
        }
}

template <int CELL>
__device__ __forceinline__ void recurrence(const RecurrenceParams& p) {
    if (p.ctas_per_group == 1) {
        if (p.weights_in_smem) recurrence_body<CELL, true, true>(p);
        else recurrence_body<CELL, true, false>(p);
    } else {
        if (p.weights_in_smem) recurrence_body<CELL, false, true>(p);
        else recurrence_body<CELL, false, false>(p);
    }
}

RNN_PERSISTENT_KERNEL(rnn_recurrence_tanh_f32, RecurrenceParams) { recurrence<RNN_CELL_TANH>(p); }
RNN_PERSISTENT_KERNEL(rnn_recurrence_relu_f32, RecurrenceParams) { recurrence<RNN_CELL_RELU>(p); }
RNN_PERSISTENT_KERNEL(rnn_recurrence_lstm_f32, RecurrenceParams) { recurrence<RNN_CELL_LSTM>(p); }
RNN_PERSISTENT_KERNEL(rnn_recurrence_gru_f32, RecurrenceParams) { recurrence<RNN_CELL_GRU>(p); }
