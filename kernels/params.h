// Kernel parameter structs, passed by value as each kernel's one argument.
// Mirrored field for field by src/kernels/params.rs (#[repr(C)]); both sides
// assert the size, so a change to one that misses the other fails to build.
#pragma once

// The most threads any kernel is launched with (MAX_THREADS in plan.rs).
#define RNN_MAX_THREADS 512

// Cell kinds, as src/kernels/params.rs numbers them.
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
    unsigned int* barrier;  // [groups] arrival counters, zero at launch
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
};

static_assert(sizeof(ProjectionParams) == 56, "mirror of src/kernels/params.rs");
static_assert(sizeof(RecurrenceParams) == 144, "mirror of src/kernels/params.rs");

// Floats of exchange workspace per group: h double buffer [2][Bt][HO] plus
// the second phase's vector [Bt][H].
#define RNN_EXCHANGE_FLOATS(bt, h, ho) ((bt) * (2 * (ho) + (h)))
