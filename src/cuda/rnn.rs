//! A network on the GPU: weights uploaded once, workspace allocated once
//! per shape and reused, every forward pass one stream-ordered sequence of
//! launches with no allocation and no host synchronisation (so it can be
//! captured in a CUDA graph once a call of that shape has been made).

use super::device::{cuda_err, device_alloc_err, CudaDevice};
use crate::cuda::launch::plan::{KernelParams, Step, WorkspaceLayout};
use crate::cuda::launch::{
    forward_steps, plan_recurrence, Blocking, ForwardBuffers, RecurrencePlan, Strategy, WeightLayout,
};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::sequence::{self, ForwardInput, ForwardOutput, SequenceDims, State};
use crate::tensor::Tensor;
use crate::weights::Weights;
use crate::RnnConfig;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use std::collections::HashMap;
use std::sync::Arc;

// The kernels' parameter structs: plain #[repr(C)] structs of integers,
// mirrored by kernels/params.h (sizes asserted on both sides), passed to the
// driver by address and taken by value.
use crate::cuda::launch::params::{
    DropoutParams, GatherParams, GemmParams, PermuteParams, ProjectionParams, RecurrenceBackwardParams,
    RecurrenceParams,
};

/// The device-resident inputs of a whole-sequence forward pass. Shapes as
/// in [`crate::sequence`]; lengths are i32 and, unlike on the host path,
/// cannot be checked without a copy: values outside `0..=T` are clamped by
/// the kernel (0 means the row never runs: zero output, `h_n = h0`).
pub struct DeviceInput<'a> {
    /// `[T, B, I]` (`[B, T, I]` batch-first), row-major.
    pub input: &'a CudaSlice<f32>,
    /// `T`.
    pub seq_len: usize,
    /// `B`.
    pub batch: usize,
    /// Valid steps per sequence (`B` values); `None`: all `T`.
    pub lengths: Option<&'a CudaSlice<i32>>,
    /// `[L·D, B, Hout]`; `None`: zeros.
    pub h0: Option<&'a CudaSlice<f32>>,
    /// `[L·D, B, H]`, LSTM only; `None`: zeros.
    pub c0: Option<&'a CudaSlice<f32>>,
}

/// Where a device forward pass writes. Every element is written.
pub struct DeviceOutput<'a> {
    /// The input's shape with `D·Hout` features.
    pub output: &'a mut CudaSlice<f32>,
    /// `[L·D, B, Hout]`.
    pub h_n: &'a mut CudaSlice<f32>,
    /// Required for an LSTM, `None` otherwise.
    pub c_n: Option<&'a mut CudaSlice<f32>>,
}

/// A forward call's inputs on the device (owned, for the host-tensor API).
pub(super) struct DeviceInputs {
    pub input: CudaSlice<f32>,
    pub lengths: Option<CudaSlice<i32>>,
    pub h0: Option<CudaSlice<f32>>,
    pub c0: Option<CudaSlice<f32>>,
}

impl DeviceInputs {
    pub fn as_input(&self, dims: SequenceDims) -> DeviceInput<'_> {
        DeviceInput {
            input: &self.input,
            seq_len: dims.seq_len,
            batch: dims.batch,
            lengths: self.lengths.as_ref(),
            h0: self.h0.as_ref(),
            c0: self.c0.as_ref(),
        }
    }
}

/// A forward call's outputs on the device (owned, for the host-tensor API).
pub(super) struct DeviceOutputs {
    pub output: CudaSlice<f32>,
    pub h_n: CudaSlice<f32>,
    pub c_n: Option<CudaSlice<f32>>,
}

/// A recurrent network resident on one GPU, running on its own stream.
/// `Send`: move it to the thread that uses it; for concurrency, make one
/// per thread (each gets its own stream and workspace).
pub struct CudaRnn {
    pub(super) device: Arc<CudaDevice>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) config: RnnConfig,
    pub(super) layout: WeightLayout,
    pub(super) weights: CudaSlice<f32>,
    pub(super) workspace: Option<CudaSlice<f32>>,
    /// Plans by batch size: the forward's, and (training) the backward's.
    plans: HashMap<usize, RecurrencePlan>,
    pub(super) backward_plans: HashMap<usize, RecurrencePlan>,
    pub(super) strategy: Strategy,
    blocking: Option<Blocking>,
}

impl CudaRnn {
    /// Uploads `weights` (converted to f32) to `device`.
    pub fn new<T: Element>(device: &Arc<CudaDevice>, weights: &Weights<T>) -> Result<Self> {
        let stream = device.new_stream()?;
        let layout = WeightLayout::new(weights.config());
        let packed = layout.pack(weights);
        let weights_dev = stream
            .clone_htod(&packed)
            .map_err(cuda_err("uploading the weights"))?;
        Ok(CudaRnn {
            device: device.clone(),
            stream,
            config: weights.config().clone(),
            layout,
            weights: weights_dev,
            workspace: None,
            plans: HashMap::new(),
            backward_plans: HashMap::new(),
            strategy: Strategy::Auto,
            blocking: None,
        })
    }

    /// The network this model runs.
    pub fn config(&self) -> &RnnConfig {
        &self.config
    }

    /// Replaces the weights (after an optimizer step, say) in place: same
    /// configuration, same device buffer, ordered on this model's stream.
    pub fn set_weights<T: Element>(&mut self, weights: &Weights<T>) -> Result<()> {
        if weights.config() != &self.config {
            return Err(Error::Config(format!(
                "set_weights: the model is {}, the new weights are {}",
                crate::weights::describe(&self.config),
                crate::weights::describe(weights.config())
            )));
        }
        let packed = self.layout.pack(weights);
        self.stream
            .memcpy_htod(&packed, &mut self.weights)
            .map_err(cuda_err("uploading the weights"))
    }

    /// The stream every call of this model is ordered on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device it runs on.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// Forces how the recurrence is split (for tuning and comparisons).
    pub fn set_strategy(&mut self, strategy: Strategy) {
        self.strategy = strategy;
        self.plans.clear();
        self.backward_plans.clear();
    }

    /// Forces how the forward recurrence's threads share their dot
    /// products (for tuning and comparisons); `None`: the planner's choice.
    pub fn set_blocking(&mut self, blocking: Option<Blocking>) {
        self.blocking = blocking;
        self.plans.clear();
        self.backward_plans.clear();
    }

    /// The split the recurrence uses for `batch` rows.
    pub fn plan(&mut self, batch: usize) -> Result<RecurrencePlan> {
        if let Some(plan) = self.plans.get(&batch) {
            return Ok(*plan);
        }
        let device = &self.device;
        let occupancy =
            |kernel: &'static str, threads: usize, smem: usize| device.occupancy(kernel, threads, smem);
        let mut plan = plan_recurrence(&self.config, batch, device.limits(), &occupancy, self.strategy)?;
        if let Some(blocking) = self.blocking {
            plan = plan.with_blocking(&self.config, blocking)?;
            let resident = device.limits().sm_count * occupancy(plan.kernel, plan.threads, plan.smem_bytes)?;
            let groups = plan.groups(&self.config) * plan.ctas_per_group;
            if plan.smem_bytes > device.limits().max_smem_per_block
                || (plan.cooperative() && groups > resident)
            {
                return Err(Error::Unsupported(format!(
                    "{blocking:?} does not fit this device with {plan:?}"
                )));
            }
        }
        self.plans.insert(batch, plan);
        Ok(plan)
    }

    /// Makes sure the workspace holds a `seq_len × batch` call; allocates
    /// only when it grows.
    fn workspace_for(&mut self, plan: &RecurrencePlan, seq_len: usize, batch: usize) -> Result<()> {
        self.workspace_words(WorkspaceLayout::new(&self.config, plan, seq_len, batch).words)
    }

    /// Makes sure the workspace holds `words` 4-byte words; allocates only when it grows.
    pub(super) fn workspace_words(&mut self, words: usize) -> Result<()> {
        if self.workspace.as_ref().is_none_or(|w| w.len() < words) {
            // SAFETY: every region is written before it is read (barriers are
            // zeroed by the plan, the rest is produced by earlier launches).
            let fresh = unsafe { self.stream.alloc::<f32>(words) }.map_err(device_alloc_err(
                "the GPU workspace",
                format!("{words} f32 words"),
                words * 4,
            ))?;
            self.workspace = Some(fresh);
        }
        Ok(())
    }

    /// Checks every buffer of a device forward against the configuration.
    pub(super) fn check_device_forward(&self, input: &DeviceInput<'_>, out: &DeviceOutput<'_>) -> Result<()> {
        let c = &self.config;
        let (t, b) = (input.seq_len, input.batch);
        if t == 0 || b == 0 {
            return Err(Error::invalid("input", "seq_len and batch must be at least 1"));
        }
        let h_len = c.num_states() * b * c.output_size();
        let c_len = c.num_states() * b * c.hidden_size;
        check_len("input", input.input.len(), t * b * c.input_size)?;
        check_len("output", out.output.len(), t * b * c.output_width())?;
        check_len("h_n", out.h_n.len(), h_len)?;
        if let Some(l) = input.lengths {
            check_len("lengths", l.len(), b)?;
        }
        if let Some(h0) = input.h0 {
            check_len("h0", h0.len(), h_len)?;
        }
        if let Some(c0) = sequence::cell_state_arg(c, "c0", input.c0, false)? {
            check_len("c0", c0.len(), c_len)?;
        }
        if let Some(c_n) = sequence::cell_state_arg(c, "c_n", out.c_n.as_ref(), true)? {
            check_len("c_n", c_n.len(), c_len)?;
        }
        Ok(())
    }

    /// Whole-sequence forward on device buffers. Checks every buffer's
    /// length against the configuration; enqueues work on [`Self::stream`]
    /// and returns without waiting.
    pub fn forward_device(&mut self, input: &DeviceInput<'_>, out: &mut DeviceOutput<'_>) -> Result<()> {
        self.check_device_forward(input, out)?;
        let (t, b) = (input.seq_len, input.batch);
        let stream = self.stream.clone();
        // cudarc's guards: no event calls, as the device tracks none ([`CudaDevice`]).
        let (input_ptr, _input) = input.input.device_ptr(&stream);
        let lengths = input.lengths.map(|l| l.device_ptr(&stream));
        let h0 = input.h0.map(|h| h.device_ptr(&stream));
        let c0 = input.c0.map(|c| c.device_ptr(&stream));
        let (output_ptr, _output) = out.output.device_ptr_mut(&stream);
        let (h_n_ptr, _h_n) = out.h_n.device_ptr_mut(&stream);
        let c_n = out.c_n.as_mut().map(|c| c.device_ptr_mut(&stream));
        let addr = |p: &Option<(u64, _)>| p.as_ref().map_or(0, |(p, _)| *p);
        self.enqueue(
            t,
            b,
            ForwardBuffers {
                input: input_ptr,
                lengths: addr(&lengths),
                h0: addr(&h0),
                c0: addr(&c0),
                output: output_ptr,
                h_n: h_n_ptr,
                c_n: addr(&c_n),
                ..ForwardBuffers::default()
            },
        )
    }

    /// Advances `B` streams by one step on device buffers: `x` `[B, I]`,
    /// `h` `[L, B, Hout]` and `c` `[L, B, H]` (LSTM) updated in place, the
    /// last layer's new `h` written to `out` `[B, Hout]`. Unidirectional
    /// networks only.
    pub fn step_device(
        &mut self,
        x: &CudaSlice<f32>,
        batch: usize,
        h: &mut CudaSlice<f32>,
        c: Option<&mut CudaSlice<f32>>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let config = &self.config;
        if config.bidirectional {
            return Err(Error::Config(
                "a bidirectional network cannot advance one step at a time".into(),
            ));
        }
        if batch == 0 {
            return Err(Error::invalid("x", "batch must be at least 1"));
        }
        check_len("x", x.len(), batch * config.input_size)?;
        check_len("h", h.len(), config.num_states() * batch * config.output_size())?;
        check_len("out", out.len(), batch * config.output_size())?;
        if let Some(c) = sequence::cell_state_arg(config, "c", c.as_ref(), true)? {
            check_len("c", c.len(), config.num_states() * batch * config.hidden_size)?;
        }
        let stream = self.stream.clone();
        let (x_ptr, _x) = x.device_ptr(&stream);
        let (h_ptr, _h) = h.device_ptr_mut(&stream);
        let c = c.map(|c| c.device_ptr_mut(&stream));
        let c_ptr = c.as_ref().map_or(0, |(p, _)| *p);
        let (out_ptr, _out) = out.device_ptr_mut(&stream);
        // The state is read as h0/c0 and written as h_n/c_n in place: each
        // CTA reads and writes only its own slice (recurrence.cu).
        self.enqueue(
            1,
            batch,
            ForwardBuffers {
                input: x_ptr,
                h0: h_ptr,
                c0: c_ptr,
                output: out_ptr,
                h_n: h_ptr,
                c_n: c_ptr,
                ..ForwardBuffers::default()
            },
        )
    }

    /// Plans (once per batch size), sizes the workspace (once per shape) and
    /// enqueues the launches on buffers already checked by the caller.
    fn enqueue(&mut self, seq_len: usize, batch: usize, mut buffers: ForwardBuffers) -> Result<()> {
        let plan = self.plan(batch)?;
        self.workspace_for(&plan, seq_len, batch)?;
        let stream = self.stream.clone();
        let (weights, _weights) = self.weights.device_ptr(&stream);
        let workspace = self.workspace.as_mut().expect("sized above");
        let (workspace, _workspace) = workspace.device_ptr_mut(&stream);
        buffers.weights = weights;
        buffers.workspace = workspace;
        let steps = forward_steps(&self.config, &plan, &self.layout, seq_len, batch, &buffers)?;
        execute(&self.device, &stream, &steps)
    }

    /// Whole-sequence forward from and to host tensors (copies in, runs,
    /// waits, copies out). Same checks and errors as [`crate::reference::forward`].
    pub fn forward(&mut self, args: &ForwardInput<'_, f32>) -> Result<ForwardOutput<f32>> {
        let dims = sequence::check_forward(&self.config, args)?;
        let inputs = self.upload_inputs(args)?;
        let mut outputs = self.alloc_outputs(dims)?;
        self.forward_device(
            &DeviceInput {
                input: &inputs.input,
                seq_len: dims.seq_len,
                batch: dims.batch,
                lengths: inputs.lengths.as_ref(),
                h0: inputs.h0.as_ref(),
                c0: inputs.c0.as_ref(),
            },
            &mut DeviceOutput {
                output: &mut outputs.output,
                h_n: &mut outputs.h_n,
                c_n: outputs.c_n.as_mut(),
            },
        )?;
        self.download_outputs(&outputs, dims)
    }

    pub(super) fn upload<T: DeviceRepr>(&self, data: &[T], what: &str) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(data)
            .map_err(cuda_err(format!("uploading {what}")))
    }

    pub(super) fn alloc_zeros(&self, len: usize, what: &str) -> Result<CudaSlice<f32>> {
        self.stream.alloc_zeros::<f32>(len).map_err(device_alloc_err(
            what,
            format!("{len} f32 on the GPU"),
            len * 4,
        ))
    }

    /// Copies `buf` back as a tensor of `shape` (waits for the stream).
    pub(super) fn download(&self, buf: &CudaSlice<f32>, shape: &[usize], what: &str) -> Result<Tensor<f32>> {
        Tensor::new(
            shape,
            self.stream
                .clone_dtoh(buf)
                .map_err(cuda_err(format!("downloading {what}")))?,
        )
    }

    /// A forward call's host inputs, copied to the device.
    pub(super) fn upload_inputs(&self, args: &ForwardInput<'_, f32>) -> Result<DeviceInputs> {
        let lengths: Option<Vec<i32>> = args.lengths.map(|l| l.iter().map(|&v| v as i32).collect());
        Ok(DeviceInputs {
            input: self.upload(args.input.data(), "input")?,
            lengths: lengths.map(|l| self.upload(&l, "lengths")).transpose()?,
            h0: args.h0.map(|h| self.upload(h.data(), "h0")).transpose()?,
            c0: args.c0.map(|c| self.upload(c.data(), "c0")).transpose()?,
        })
    }

    /// Device buffers for a forward call's outputs.
    pub(super) fn alloc_outputs(&self, dims: SequenceDims) -> Result<DeviceOutputs> {
        let c = &self.config;
        let b = dims.batch;
        Ok(DeviceOutputs {
            output: self.alloc_zeros(dims.seq_len * b * c.output_width(), "the output")?,
            h_n: self.alloc_zeros(c.num_states() * b * c.output_size(), "h_n")?,
            c_n: c
                .has_cell_state()
                .then(|| self.alloc_zeros(c.num_states() * b * c.hidden_size, "c_n"))
                .transpose()?,
        })
    }

    /// The outputs as host tensors; `input_shape` gives the layout of `output`.
    pub(super) fn download_outputs(
        &self,
        outputs: &DeviceOutputs,
        dims: SequenceDims,
    ) -> Result<ForwardOutput<f32>> {
        let c = &self.config;
        let out_shape = sequence::output_shape(c, dims);
        Ok(ForwardOutput {
            output: self.download(&outputs.output, &out_shape, "output")?,
            h_n: self.download(&outputs.h_n, &sequence::h_shape(c, dims.batch), "h_n")?,
            c_n: outputs
                .c_n
                .as_ref()
                .map(|c_n| self.download(c_n, &sequence::c_shape(c, dims.batch), "c_n"))
                .transpose()?,
        })
    }

    /// One step for host tensors (see [`crate::reference::step`]).
    pub fn step(&mut self, x: &Tensor<f32>, state: &mut State<f32>) -> Result<Tensor<f32>> {
        let batch = sequence::check_step(&self.config, x, state)?;
        let x_dev = self.upload(x.data(), "x")?;
        let mut h = self.upload(state.h.data(), "h")?;
        let mut c = state.c.as_ref().map(|c| self.upload(c.data(), "c")).transpose()?;
        let mut out = self.alloc_zeros(batch * self.config.output_size(), "the step's output")?;
        self.step_device(&x_dev, batch, &mut h, c.as_mut(), &mut out)?;
        state.h = self.download(&h, state.h.shape(), "h")?;
        if let (Some(state_c), Some(c)) = (state.c.as_mut(), &c) {
            *state_c = self.download(c, state_c.shape(), "c")?;
        }
        self.download(&out, &[batch, self.config.output_size()], "the step's output")
    }
}

pub(super) fn check_len(tensor: &str, found: usize, expected: usize) -> Result<()> {
    if found != expected {
        return Err(Error::invalid(
            tensor,
            format!("device buffer holds {found} elements, expected {expected}"),
        ));
    }
    Ok(())
}

/// Enqueues a plan's steps on `stream`: one context check, then exactly the
/// plan's driver calls (its launches and counter fills), nothing per buffer.
pub(super) fn execute(device: &CudaDevice, stream: &CudaStream, steps: &[Step]) -> Result<()> {
    // The raw calls below do not bind the context themselves.
    device.bind()?;
    for step in steps {
        match step {
            Step::FillWords { addr, count, value } => {
                // SAFETY: the plan addresses words inside the live workspace.
                unsafe { cudarc::driver::sys::cuMemsetD32Async(*addr, *value, *count, stream.cu_stream()) }
                    .result()
                    .map_err(cuda_err("filling workspace words"))?;
            }
            Step::Launch(launch) => {
                let function = device.function(launch.kernel)?.cu_function();
                let params: *const std::ffi::c_void = match &launch.params {
                    KernelParams::Projection(p) => (p as *const ProjectionParams).cast(),
                    KernelParams::Recurrence(p) => (p as *const RecurrenceParams).cast(),
                    KernelParams::RecurrenceBackward(p) => (p as *const RecurrenceBackwardParams).cast(),
                    KernelParams::Gemm(p) => (p as *const GemmParams).cast(),
                    KernelParams::Gather(p) => (p as *const GatherParams).cast(),
                    KernelParams::Permute(p) => (p as *const PermuteParams).cast(),
                    KernelParams::Dropout(p) => (p as *const DropoutParams).cast(),
                };
                // Every kernel takes its one parameter struct by value.
                let mut args = [params as *mut std::ffi::c_void];
                let grid = (launch.grid[0], launch.grid[1], launch.grid[2]);
                let block = (launch.block, 1, 1);
                // A cooperative launch whenever the kernel's CTAs wait for
                // each other (the plan sized the grid from the occupancy query).
                let launch_kernel = if launch.cooperative {
                    cudarc::driver::result::launch_cooperative_kernel
                } else {
                    cudarc::driver::result::launch_kernel
                };
                // SAFETY: the params hold addresses of live buffers whose
                // lengths the caller checked against the same configuration
                // the plan was made from, and outlive this call (the driver
                // copies them at launch).
                let launched = unsafe {
                    launch_kernel(
                        function,
                        grid,
                        block,
                        launch.smem_bytes,
                        stream.cu_stream(),
                        &mut args,
                    )
                };
                launched.map_err(cuda_err(format!("launching {} {:?}", launch.kernel, launch.grid)))?;
            }
        }
    }
    Ok(())
}
