//! Training on the GPU: a forward pass that keeps what backward needs in a
//! device reserve, and the backward (see `src/kernels/train.rs` for the
//! launches). Host tensors in and out; the reserve stays on the device.

use super::device::cuda_err;
use super::rnn::{execute, CudaRnn, DeviceInputs};
use crate::cpu::{GradOutputs, Gradients};
use crate::dropout::Dropout;
use crate::error::{Error, Result};
use crate::kernels::train::{backward_steps, forward_train_steps, TrainingBuffers, TrainingLayout};
use crate::kernels::{plan_pass, Pass, RecurrencePlan};
use crate::sequence::{self, ForwardInput, ForwardOutput, SequenceDims};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

/// What a training forward leaves on the device for its backward: the
/// reserve (every layer's output and gate activations) and the forward's
/// inputs. Only valid with the model that made it.
pub struct CudaTrainingState {
    dims: SequenceDims,
    input_shape: Vec<usize>,
    dropout: Option<Dropout>,
    forward: RecurrencePlan,
    backward: RecurrencePlan,
    layout: TrainingLayout,
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
    fn training_plans(&mut self, batch: usize) -> Result<(RecurrencePlan, RecurrencePlan)> {
        let forward = self.plan(batch)?;
        let device = self.device.clone();
        let occupancy =
            |kernel: &'static str, threads: usize, smem: usize| device.occupancy(kernel, threads, smem);
        let backward = plan_pass(
            Pass::Backward,
            &self.config,
            batch,
            device.limits(),
            &occupancy,
            self.strategy,
        )?;
        Ok((forward, backward))
    }

    /// The bytes of device reserve a training forward of this shape keeps
    /// (like cuDNN's reserve-space query).
    pub fn reserve_bytes(&mut self, seq_len: usize, batch: usize, dropout: bool) -> Result<usize> {
        let (forward, backward) = self.training_plans(batch)?;
        let layout = TrainingLayout::new(&self.config, &forward, &backward, seq_len, batch, dropout);
        Ok(layout.reserve_words * 4)
    }

    /// The forward pass of training (see [`crate::cpu::forward_train`]):
    /// inter-layer dropout from `dropout_seed` when the configuration has
    /// dropout, and a state for [`CudaRnn::backward`].
    pub fn forward_train(
        &mut self,
        args: &ForwardInput<'_, f32>,
        dropout_seed: Option<u64>,
    ) -> Result<(ForwardOutput<f32>, CudaTrainingState)> {
        let config = self.config.clone();
        let dims = sequence::check_forward(&config, args)?;
        let (t, b) = (dims.seq_len, dims.batch);
        let dropout = dropout_seed.filter(|_| config.dropout > 0.0).map(|seed| Dropout {
            p: config.dropout,
            seed,
        });
        let (forward, backward) = self.training_plans(b)?;
        let layout = TrainingLayout::new(&config, &forward, &backward, t, b, dropout.is_some());
        self.workspace_words(layout.workspace_words)?;
        let stream = self.stream.clone();
        let inputs = self.upload_inputs(args)?;
        let mut outputs = self.alloc_outputs(dims)?;
        let mut reserve = self.alloc_zeros(layout.reserve_words, "the training reserve")?;
        {
            let (input_ptr, _g1) = inputs.input.device_ptr(&stream);
            let lengths_ptr = inputs.lengths.as_ref().map(|l| l.device_ptr(&stream));
            let h0_ptr = inputs.h0.as_ref().map(|h| h.device_ptr(&stream));
            let c0_ptr = inputs.c0.as_ref().map(|c| c.device_ptr(&stream));
            let (output_ptr, _g2) = outputs.output.device_ptr_mut(&stream);
            let (h_n_ptr, _g3) = outputs.h_n.device_ptr_mut(&stream);
            let c_n_ptr = outputs.c_n.as_mut().map(|c| c.device_ptr_mut(&stream));
            let (reserve_ptr, _g4) = reserve.device_ptr_mut(&stream);
            let (weights_ptr, _g5) = self.weights.device_ptr(&stream);
            let workspace = self.workspace.as_mut().expect("sized above");
            let (workspace_ptr, _g6) = workspace.device_ptr_mut(&stream);
            let addr = |p: &Option<(u64, _)>| p.as_ref().map_or(0, |(p, _)| *p);
            let buffers = TrainingBuffers {
                input: input_ptr,
                lengths: addr(&lengths_ptr),
                h0: addr(&h0_ptr),
                c0: addr(&c0_ptr),
                output: output_ptr,
                h_n: h_n_ptr,
                c_n: addr(&c_n_ptr),
                weights: weights_ptr,
                reserve: reserve_ptr,
                workspace: workspace_ptr,
                ..TrainingBuffers::default()
            };
            let steps =
                forward_train_steps(&config, &forward, &self.layout, &layout, t, b, dropout, &buffers)?;
            execute(&self.device, &stream, &steps)?;
        }
        let result = self.download_outputs(&outputs, args.input.shape(), dims)?;
        let state = CudaTrainingState {
            dims,
            input_shape: args.input.shape().to_vec(),
            dropout,
            forward,
            backward,
            layout,
            reserve,
            inputs,
        };
        Ok((result, state))
    }

    /// Backward through the training forward that made `state`, given the
    /// gradients of its outputs (see [`crate::cpu::backward`]). Gradients are
    /// bitwise reproducible: every sum runs in a fixed order.
    pub fn backward(
        &mut self,
        state: &CudaTrainingState,
        grads: &GradOutputs<'_, f32>,
    ) -> Result<Gradients<f32>> {
        let config = self.config.clone();
        let dims = state.dims;
        sequence::check_grad_outputs(&config, dims, grads.output, grads.h_n, grads.c_n)?;
        let recomputed = TrainingLayout::new(
            &config,
            &state.forward,
            &state.backward,
            dims.seq_len,
            dims.batch,
            state.dropout.is_some(),
        );
        if recomputed != state.layout {
            return Err(Error::invalid("state", "was made by another model"));
        }
        let (t, b) = (dims.seq_len, dims.batch);
        self.workspace_words(state.layout.workspace_words)?;
        let stream = self.stream.clone();
        let grad_output = self.upload(grads.output.data(), "grad_output")?;
        let grad_h_n = grads.h_n.map(|g| self.upload(g.data(), "grad_h_n")).transpose()?;
        let grad_c_n = grads.c_n.map(|g| self.upload(g.data(), "grad_c_n")).transpose()?;
        let mut grad_input = self.alloc_zeros(state.inputs.input.len(), "grad_input")?;
        let mut grad_h0 = self.alloc_zeros(config.num_states() * b * config.output_size(), "grad_h0")?;
        let mut grad_c0 = config
            .has_cell_state()
            .then(|| self.alloc_zeros(config.num_states() * b * config.hidden_size, "grad_c0"))
            .transpose()?;
        let mut grad_weights = self.alloc_zeros(self.layout.len, "weight gradients")?;
        {
            let (input, _g1) = state.inputs.input.device_ptr(&stream);
            let lengths = state.inputs.lengths.as_ref().map(|l| l.device_ptr(&stream));
            let h0 = state.inputs.h0.as_ref().map(|s| s.device_ptr(&stream));
            let c0 = state.inputs.c0.as_ref().map(|s| s.device_ptr(&stream));
            let (reserve, _g2) = state.reserve.device_ptr(&stream);
            let (go, _g3) = grad_output.device_ptr(&stream);
            let ghn = grad_h_n.as_ref().map(|s| s.device_ptr(&stream));
            let gcn = grad_c_n.as_ref().map(|s| s.device_ptr(&stream));
            let (gi, _g4) = grad_input.device_ptr_mut(&stream);
            let (gh0, _g5) = grad_h0.device_ptr_mut(&stream);
            let gc0 = grad_c0.as_mut().map(|g| g.device_ptr_mut(&stream));
            let (gw, _g6) = grad_weights.device_ptr_mut(&stream);
            let (weights, _g7) = self.weights.device_ptr(&stream);
            let workspace = self.workspace.as_mut().expect("sized above");
            let (workspace, _g8) = workspace.device_ptr_mut(&stream);
            let addr = |p: &Option<(u64, _)>| p.as_ref().map_or(0, |(p, _)| *p);
            let buffers = TrainingBuffers {
                input,
                lengths: addr(&lengths),
                h0: addr(&h0),
                c0: addr(&c0),
                grad_output: go,
                grad_h_n: addr(&ghn),
                grad_c_n: addr(&gcn),
                grad_input: gi,
                grad_h0: gh0,
                grad_c0: addr(&gc0),
                grad_weights: gw,
                weights,
                reserve,
                workspace,
                ..TrainingBuffers::default()
            };
            let steps = backward_steps(
                &config,
                &state.backward,
                &self.layout,
                &state.layout,
                t,
                b,
                state.dropout,
                &buffers,
            )?;
            execute(&self.device, &stream, &steps)?;
        }
        let packed = stream
            .clone_dtoh(&grad_weights)
            .map_err(cuda_err("downloading weight gradients"))?;
        Ok(Gradients {
            input: self.download(&grad_input, &state.input_shape, "grad_input")?,
            h0: self.download(&grad_h0, &sequence::h_shape(&config, b), "grad_h0")?,
            c0: grad_c0
                .as_ref()
                .map(|g| self.download(g, &sequence::c_shape(&config, b), "grad_c0"))
                .transpose()?,
            weights: self.layout.unpack(&config, &packed)?,
        })
    }
}
