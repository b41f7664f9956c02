//! Training on the GPU: a forward pass that keeps what backward needs in a
//! device reserve (sized by [`CudaRnn::reserve_bytes`], like cuDNN's
//! reserve-space query), and the backward (see `src/cuda/launch/train.rs` for
//! the launches). A device-buffer API that copies nothing, and a host-tensor
//! API on top of it.

use super::device::cuda_err;
use super::rnn::{check_len, execute, CudaRnn, DeviceInputs};
use super::{DeviceInput, DeviceOutput};
use crate::cuda::launch::train::{backward_steps, forward_train_steps, TrainingBuffers, TrainingLayout};
use crate::cuda::launch::{plan_pass, Pass, RecurrencePlan};
use crate::dropout::Dropout;
use crate::error::Result;
use crate::sequence::{self, ForwardInput, ForwardOutput, SequenceDims};
use crate::sequence::{GradOutputs, Gradients};
use crate::weights::Weights;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

/// The gradients of a forward's outputs, on the device (shapes of `output`,
/// `h_n`, `c_n`; `None` means zeros).
pub struct DeviceGradOutputs<'a> {
    /// The gradient of `output`.
    pub output: &'a CudaSlice<f32>,
    /// The gradient of `h_n`.
    pub h_n: Option<&'a CudaSlice<f32>>,
    /// The gradient of `c_n` (LSTM).
    pub c_n: Option<&'a CudaSlice<f32>>,
}

/// Where a device backward writes: the gradients of the input, the initial
/// states, and every weight, packed as [`CudaRnn::gradient_len`] floats
/// (unpack with [`CudaRnn::unpack_gradients`]). Every element is written.
pub struct DeviceGradients<'a> {
    /// The gradient of the input, shaped as it.
    pub input: &'a mut CudaSlice<f32>,
    /// The gradient of `h0`.
    pub h0: &'a mut CudaSlice<f32>,
    /// Required for an LSTM, `None` otherwise.
    pub c0: Option<&'a mut CudaSlice<f32>>,
    /// Every weight's gradient, in the order of [`crate::Weights::named_parameters`].
    pub weights: &'a mut CudaSlice<f32>,
}

/// What a host-API training forward leaves on the device for its backward.
pub struct CudaTrainingState {
    dims: SequenceDims,
    input_shape: Vec<usize>,
    dropout_seed: Option<u64>,
    reserve: CudaSlice<f32>,
    inputs: DeviceInputs,
}

impl CudaTrainingState {
    /// The reserve's size in bytes.
    pub fn reserve_bytes(&self) -> usize {
        self.reserve.len() * 4
    }
}

impl CudaRnn {
    fn dropout(&self, seed: Option<u64>) -> Option<Dropout> {
        let p = self.config.dropout;
        seed.filter(|_| p > 0.0).map(|seed| Dropout { p, seed })
    }

    /// The forward and backward splits and the training layout of a shape.
    fn training_layout(
        &mut self,
        dims: SequenceDims,
        dropout: bool,
    ) -> Result<(RecurrencePlan, RecurrencePlan, TrainingLayout)> {
        let forward = self.plan(dims.batch)?;
        // Planned once per batch size: training asks for it on every call.
        let backward = match self.backward_plans.get(&dims.batch) {
            Some(plan) => *plan,
            None => {
                let device = self.device.clone();
                let occupancy = |kernel: &'static str, threads: usize, smem: usize| {
                    device.occupancy(kernel, threads, smem)
                };
                let plan = plan_pass(
                    Pass::Backward,
                    &self.config,
                    dims.batch,
                    device.limits(),
                    &occupancy,
                    self.strategy,
                )?;
                self.backward_plans.insert(dims.batch, plan);
                plan
            }
        };
        let layout = TrainingLayout::new(
            &self.config,
            &forward,
            &backward,
            dims.seq_len,
            dims.batch,
            dropout,
        );
        Ok((forward, backward, layout))
    }

    /// The bytes of device reserve a training forward of this shape keeps.
    pub fn reserve_bytes(&mut self, seq_len: usize, batch: usize, dropout: bool) -> Result<usize> {
        let (_, _, layout) = self.training_layout(SequenceDims { seq_len, batch }, dropout)?;
        Ok(layout.reserve_words * 4)
    }

    /// The length of a packed weight-gradient buffer.
    pub fn gradient_len(&self) -> usize {
        self.layout.len
    }

    /// Weight gradients from a packed device buffer, under PyTorch's names.
    pub fn unpack_gradients(&self, packed: &CudaSlice<f32>) -> Result<Weights<f32>> {
        let host = self
            .stream
            .clone_dtoh(packed)
            .map_err(cuda_err("downloading weight gradients"))?;
        self.layout.unpack(&self.config, &host)
    }

    /// The forward pass of training on device buffers: as
    /// [`CudaRnn::forward_device`], plus inter-layer dropout from
    /// `dropout_seed` (when the configuration has dropout) and `reserve`
    /// (`reserve_bytes / 4` floats) filled for [`CudaRnn::backward_device`].
    pub fn forward_train_device(
        &mut self,
        input: &DeviceInput<'_>,
        out: &mut DeviceOutput<'_>,
        reserve: &mut CudaSlice<f32>,
        dropout_seed: Option<u64>,
    ) -> Result<()> {
        self.check_device_forward(input, out)?;
        let dims = SequenceDims {
            seq_len: input.seq_len,
            batch: input.batch,
        };
        let dropout = self.dropout(dropout_seed);
        let (forward, _, layout) = self.training_layout(dims, dropout.is_some())?;
        check_len("reserve", reserve.len(), layout.reserve_words)?;
        self.workspace_words(layout.workspace_words)?;
        let stream = self.stream.clone();
        let (input_ptr, _g1) = input.input.device_ptr(&stream);
        let lengths = input.lengths.map(|l| l.device_ptr(&stream));
        let h0 = input.h0.map(|h| h.device_ptr(&stream));
        let c0 = input.c0.map(|c| c.device_ptr(&stream));
        let (output, _g2) = out.output.device_ptr_mut(&stream);
        let (h_n, _g3) = out.h_n.device_ptr_mut(&stream);
        let c_n = out.c_n.as_mut().map(|c| c.device_ptr_mut(&stream));
        let (reserve, _g4) = reserve.device_ptr_mut(&stream);
        let (weights, _g5) = self.weights.device_ptr(&stream);
        let workspace = self.workspace.as_mut().expect("sized above");
        let (workspace, _g6) = workspace.device_ptr_mut(&stream);
        let addr = |p: &Option<(u64, _)>| p.as_ref().map_or(0, |(p, _)| *p);
        let buffers = TrainingBuffers {
            input: input_ptr,
            lengths: addr(&lengths),
            h0: addr(&h0),
            c0: addr(&c0),
            output,
            h_n,
            c_n: addr(&c_n),
            weights,
            reserve,
            workspace,
            ..TrainingBuffers::default()
        };
        let steps = forward_train_steps(
            &self.config,
            &forward,
            &self.layout,
            &layout,
            dims.seq_len,
            dims.batch,
            dropout,
            &buffers,
        )?;
        execute(&self.device, &stream, &steps)
    }

    /// Backward through the training forward that filled `reserve` from the
    /// same `input` and `dropout_seed`, given the gradients of its outputs.
    /// Every sum runs in a fixed order: gradients are bitwise reproducible.
    pub fn backward_device(
        &mut self,
        input: &DeviceInput<'_>,
        reserve: &CudaSlice<f32>,
        dropout_seed: Option<u64>,
        grads: &DeviceGradOutputs<'_>,
        out: &mut DeviceGradients<'_>,
    ) -> Result<()> {
        let c = self.config.clone();
        let dims = SequenceDims {
            seq_len: input.seq_len,
            batch: input.batch,
        };
        let (t, b) = (dims.seq_len, dims.batch);
        let dropout = self.dropout(dropout_seed);
        let (_, backward, layout) = self.training_layout(dims, dropout.is_some())?;
        let (h_len, c_len) = (
            c.num_states() * b * c.output_size(),
            c.num_states() * b * c.hidden_size,
        );
        check_len("input", input.input.len(), t * b * c.input_size)?;
        check_len("reserve", reserve.len(), layout.reserve_words)?;
        check_len("grad_output", grads.output.len(), t * b * c.output_width())?;
        if let Some(g) = grads.h_n {
            check_len("grad_h_n", g.len(), h_len)?;
        }
        if let Some(g) = sequence::cell_state_arg(&c, "grad_c_n", grads.c_n, false)? {
            check_len("grad_c_n", g.len(), c_len)?;
        }
        check_len("grad_input", out.input.len(), t * b * c.input_size)?;
        check_len("grad_h0", out.h0.len(), h_len)?;
        if let Some(g) = sequence::cell_state_arg(&c, "grad_c0", out.c0.as_ref(), true)? {
            check_len("grad_c0", g.len(), c_len)?;
        }
        check_len("grad weights", out.weights.len(), self.layout.len)?;
        self.workspace_words(layout.workspace_words)?;

        let stream = self.stream.clone();
        let (input_ptr, _g1) = input.input.device_ptr(&stream);
        let lengths = input.lengths.map(|l| l.device_ptr(&stream));
        let h0 = input.h0.map(|h| h.device_ptr(&stream));
        let c0 = input.c0.map(|c| c.device_ptr(&stream));
        let (reserve, _g2) = reserve.device_ptr(&stream);
        let (grad_output, _g3) = grads.output.device_ptr(&stream);
        let grad_h_n = grads.h_n.map(|g| g.device_ptr(&stream));
        let grad_c_n = grads.c_n.map(|g| g.device_ptr(&stream));
        let (grad_input, _g4) = out.input.device_ptr_mut(&stream);
        let (grad_h0, _g5) = out.h0.device_ptr_mut(&stream);
        let grad_c0 = out.c0.as_mut().map(|g| g.device_ptr_mut(&stream));
        let (grad_weights, _g6) = out.weights.device_ptr_mut(&stream);
        let (weights, _g7) = self.weights.device_ptr(&stream);
        let workspace = self.workspace.as_mut().expect("sized above");
        let (workspace, _g8) = workspace.device_ptr_mut(&stream);
        let addr = |p: &Option<(u64, _)>| p.as_ref().map_or(0, |(p, _)| *p);
        let buffers = TrainingBuffers {
            input: input_ptr,
            lengths: addr(&lengths),
            h0: addr(&h0),
            c0: addr(&c0),
            grad_output,
            grad_h_n: addr(&grad_h_n),
            grad_c_n: addr(&grad_c_n),
            grad_input,
            grad_h0,
            grad_c0: addr(&grad_c0),
            grad_weights,
            weights,
            reserve,
            workspace,
            ..TrainingBuffers::default()
        };
        let steps = backward_steps(&c, &backward, &self.layout, &layout, t, b, dropout, &buffers)?;
        execute(&self.device, &stream, &steps)
    }

    /// The forward pass of training for host tensors (see
    /// [`crate::reference::forward_train`]); the state it returns, with the
    /// reserve and the inputs on the device, feeds [`CudaRnn::backward`].
    pub fn forward_train(
        &mut self,
        args: &ForwardInput<'_, f32>,
        dropout_seed: Option<u64>,
    ) -> Result<(ForwardOutput<f32>, CudaTrainingState)> {
        let dims = sequence::check_forward(&self.config, args)?;
        let inputs = self.upload_inputs(args)?;
        let mut outputs = self.alloc_outputs(dims)?;
        let reserve_words =
            self.reserve_bytes(dims.seq_len, dims.batch, self.dropout(dropout_seed).is_some())? / 4;
        let mut reserve = self.alloc_zeros(reserve_words, "the training reserve")?;
        self.forward_train_device(
            &inputs.as_input(dims),
            &mut DeviceOutput {
                output: &mut outputs.output,
                h_n: &mut outputs.h_n,
                c_n: outputs.c_n.as_mut(),
            },
            &mut reserve,
            dropout_seed,
        )?;
        let result = self.download_outputs(&outputs, dims)?;
        let state = CudaTrainingState {
            dims,
            input_shape: args.input.shape().to_vec(),
            dropout_seed,
            reserve,
            inputs,
        };
        Ok((result, state))
    }

    /// Backward for host tensors (see [`crate::reference::backward`]), through the
    /// training forward that made `state`.
    pub fn backward(
        &mut self,
        state: &CudaTrainingState,
        grads: &GradOutputs<'_, f32>,
    ) -> Result<Gradients<f32>> {
        let c = self.config.clone();
        let dims = state.dims;
        sequence::check_grad_outputs(&c, dims, grads.output, grads.h_n, grads.c_n)?;
        let b = dims.batch;
        let grad_output = self.upload(grads.output.data(), "grad_output")?;
        let grad_h_n = grads.h_n.map(|g| self.upload(g.data(), "grad_h_n")).transpose()?;
        let grad_c_n = grads.c_n.map(|g| self.upload(g.data(), "grad_c_n")).transpose()?;
        let mut grad_input = self.alloc_zeros(state.inputs.input.len(), "grad_input")?;
        let mut grad_h0 = self.alloc_zeros(c.num_states() * b * c.output_size(), "grad_h0")?;
        let mut grad_c0 = c
            .has_cell_state()
            .then(|| self.alloc_zeros(c.num_states() * b * c.hidden_size, "grad_c0"))
            .transpose()?;
        let mut grad_weights = self.alloc_zeros(self.layout.len, "weight gradients")?;
        self.backward_device(
            &state.inputs.as_input(dims),
            &state.reserve,
            state.dropout_seed,
            &DeviceGradOutputs {
                output: &grad_output,
                h_n: grad_h_n.as_ref(),
                c_n: grad_c_n.as_ref(),
            },
            &mut DeviceGradients {
                input: &mut grad_input,
                h0: &mut grad_h0,
                c0: grad_c0.as_mut(),
                weights: &mut grad_weights,
            },
        )?;
        Ok(Gradients {
            input: self.download(&grad_input, &state.input_shape, "grad_input")?,
            h0: self.download(&grad_h0, &sequence::h_shape(&c, b), "grad_h0")?,
            c0: grad_c0
                .as_ref()
                .map(|g| self.download(g, &sequence::c_shape(&c, b), "grad_c0"))
                .transpose()?,
            weights: self.unpack_gradients(&grad_weights)?,
        })
    }
}
