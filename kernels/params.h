// Kernel parameter structs, passed by value as each kernel's one argument.
// Mirrored field for field by src/cuda/launch/params.rs (#[repr(C)]); both sides
// assert the size, so a change to one that misses the other fails to build.
#pragma once

// The most threads any kernel is launched with (MAX_THREADS in plan.rs).
#define RNN_MAX_THREADS 512

// The most batch rows one thread of the recurrence computes at once
// (MAX_ROWS_PER_THREAD in plan.rs): its accumulators are G × this registers.
#define RNN_MAX_ROWS_PER_THREAD 4

// Words between two groups' barrier counters (BARRIER_STRIDE in params.rs):
// a 128-byte line each, so that no group polls a line that another group's
// arrivals write.
#define RNN_BARRIER_STRIDE 32

// Cell kinds, as src/cuda/launch/params.rs numbers them.
#define RNN_CELL_TANH 0
#define RNN_CELL_RELU 1
#define RNN_CELL_LSTM 2
#define RNN_CELL_GRU 3

// y[M, N] = x[M, K] · w[N, K]ᵀ + bias[N]: the input projection of one layer
// for all timesteps and both directions at once (w stacks both directions'
// W_ih). Row m of y is timestep m / batch, batch row m % batch; the x row it
// reads is the same row in time-major order, or (b * seq_len + t) when
// x_batch_first.
struct ProjectionParams {
    const float* x;     // [T, B, K] or [B, T, K]
    const float* w;     // [N, K]
    const float* bias;  // [N] or null
    float* y;           // [T * B, N]
    int rows;           // M = T * B
    int cols;           // N
    int depth;          // K
    int seq_len;
    int batch;
    int x_batch_first;
};

// One layer's recurrence over all timesteps, both directions, persistent:
// see recurrence.cu for the design. Shapes use D = dirs, G = gates,
// H = hidden, HO = out_size (H, or the LSTM projection size).
struct RecurrenceParams {
    const float* xp;        // [T * B, D * G * H]: x·W_ihᵀ + b_ih (ProjectionParams.y)
    const float* w_hh;      // [D, G * H, HO]
    const float* b_hh;      // [D, G * H] or null
    const float* w_hr;      // [D, HO, H] or null (LSTM projection)
    const float* h0;        // [D, B, HO] or null for zeros
    const float* c0;        // [D, B, H] or null for zeros (LSTM)
    const int* lengths;     // [B], each in 1..=T, or null for all T
    float* y;               // [T, B, D * HO] or [B, T, D * HO] (y_batch_first)
    float* h_n;             // [D, B, HO]; may alias h0 (each CTA reads and writes only its own slice)
    float* c_n;             // [D, B, H] or null; may alias c0
    float* exchange;        // workspace: per group, RNN_EXCHANGE_FLOATS(batch_tile, hidden, out_size)
    unsigned int* barrier;  // [groups × RNN_BARRIER_STRIDE]: arrival counters, zero at launch
    float* reserve;         // training: what backward needs (see recurrence.cu), else null
    int seq_len;
    int batch;
    int hidden;
    int out_size;
    int cell;                 // RNN_CELL_*
    int linear_before_reset;  // GRU: 1 = PyTorch/cuDNN, 0 = the original GRU
    int y_batch_first;
    int ctas_per_group;       // gridDim.x: CTAs that split one (direction, batch tile)
    int units_per_cta;        // hidden units each CTA owns (all G gates of each)
    int outputs_per_cta;      // projected outputs each CTA owns (LSTM projection)
    int batch_tile;           // batch rows per group (gridDim.y tiles cover B)
    int weights_in_smem;      // 1: W_hh (and W_hr) slices stay in shared memory for all steps
    int k_lanes;              // lanes that split each dot product (1..32, a power of two)
    int rows_per_thread;      // batch rows each lane group computes at once (1, 2 or RNN_MAX_ROWS_PER_THREAD)
    int w_stride;             // floats between W_hh rows in shared memory (padded against bank conflicts)
    int w2_stride;            // the same for W_hr rows
};

// Backpropagation through one layer's recurrence, persistent, reverse time:
// see recurrence_backward.cu. Same split as the forward (RecurrenceParams).
struct RecurrenceBackwardParams {
    const float* w_hh;      // [D, G * H, HO]
    const float* w_hr;      // [D, HO, H] or null
    const float* reserve;   // the layer's training reserve (recurrence.cu)
    const float* y;         // the layer's output [T, B, D * HO] (or [B, T, ...], y_batch_first)
    const float* h0;        // [D, B, HO] or null
    const float* c0;        // [D, B, H] or null
    const int* lengths;     // [B] or null
    const float* dy;        // gradient of y, laid out like y
    const float* dh_n;      // [D, B, HO] or null
    const float* dc_n;      // [D, B, H] or null
    float* d_gi;            // [T * B, D * G * H]: gradient of x·W_ihᵀ + b_ih, zero past each row's end
    float* d_gh;            // [T * B, D * G * H]: gradient of W_hh·h + b_hh (original GRU: the n rows saw r⊙h)
    float* d_h;             // [T * B, D * HO]: gradient of each step's projected h (LSTM projection), else null
    float* dh0;             // [D, B, HO]
    float* dc0;             // [D, B, H] or null
    float* exchange;        // per group RNN_BACKWARD_EXCHANGE_FLOATS(batch_tile, G * H, H, HO)
    unsigned int* barrier;  // [groups × RNN_BARRIER_STRIDE], zero at launch
    int seq_len;
    int batch;
    int hidden;
    int out_size;
    int cell;
    int linear_before_reset;
    int y_batch_first;
    int ctas_per_group;
    int units_per_cta;
    int outputs_per_cta;
    int batch_tile;
    int weights_in_smem;
};

// Exchange floats per group of the backward recurrence: double buffers of
// the gate gradients [bt][G*H], the projected h gradient [bt][HO] and the
// original GRU's candidate gradient [bt][H].
#define RNN_BACKWARD_EXCHANGE_FLOATS(bt, gh, h, ho) (2 * (bt) * ((gh) + (ho) + (h)))

// C(m, n) [+]= Σ_k A(m, k) · B(k, n) with arbitrary strides, so that one
// kernel serves every product of training: A(m, k) = a[m*a_m + k*a_k],
// B(k, n) = b[k*b_k + n*b_n], C(m, n) = c[m*c_m + n]. Each C element is one
// thread's sum in k order: bitwise reproducible.
struct GemmParams {
    const float* a;
    const float* b;
    float* c;
    long long a_m, a_k;
    long long b_k, b_n;
    long long c_m;
    int m, n, k;
    int accumulate;  // 1: C += A·B, 0: C = A·B
};

// What rnn_gather_states_f32 builds, per (t, b, direction), for the weight
// gradients of one layer (zero past each row's end):
#define RNN_GATHER_H_PREV 0    // the state the step at t read: [T*B, D*HO]
#define RNN_GATHER_RESET_H 1   // original GRU: r ⊙ h_prev, what W_hn multiplied: [T*B, D*H]
#define RNN_GATHER_H_FULL 2    // LSTM projection: o ⊙ tanh(c), what W_hr multiplied: [T*B, D*H]

struct GatherParams {
    const float* y;        // the layer's output, time-major [T, B, D*HO]
    const float* h0;       // [D, B, HO] or null
    const float* reserve;  // the layer's training reserve
    const int* lengths;    // [B] or null
    float* out;
    int seq_len, batch, hidden, out_size, dirs, cell, what, pad_;
};

// dst[j, i, :] = src[i, j, :] for src [A, B, W]: time-major <-> batch-first.
struct PermuteParams {
    const float* src;
    float* dst;
    int a, b, width, pad_;
};

// dst = src ⊙ mask for a layer's output, time-major [T, B, W]: the mask of
// src/dropout.rs, bit for bit (element index (t*B + b)*W + col).
struct DropoutParams {
    const float* src;
    float* dst;
    double p;
    unsigned long long seed;
    int layer, seq_len, batch, width;
};

static_assert(sizeof(GemmParams) == 80, "mirror of src/cuda/launch/params.rs");
static_assert(sizeof(GatherParams) == 72, "mirror of src/cuda/launch/params.rs");
static_assert(sizeof(PermuteParams) == 32, "mirror of src/cuda/launch/params.rs");
static_assert(sizeof(DropoutParams) == 48, "mirror of src/cuda/launch/params.rs");
static_assert(sizeof(ProjectionParams) == 56, "mirror of src/cuda/launch/params.rs");
static_assert(sizeof(RecurrenceParams) == 168, "mirror of src/cuda/launch/params.rs");
static_assert(sizeof(RecurrenceBackwardParams) == 184, "mirror of src/cuda/launch/params.rs");

// Floats of exchange workspace per group: h double buffer [2][Bt][HO] plus
// the second phase's vector [Bt][H].
#define RNN_EXCHANGE_FLOATS(bt, h, ho) ((bt) * (2 * (ho) + (h)))
