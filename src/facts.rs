//! What a PyTorch `state_dict` does not record, supplied by the caller.
//!
//! The weights' names and shapes give the cell family, the sizes, layers,
//! directions and projection; they cannot tell `batch_first`, `tanh` from
//! `relu`, or PyTorch's GRU from the original one. A file saved by this
//! crate records those in its metadata; one saved by PyTorch does not, and
//! the caller says them here. A fact that contradicts the file is an error;
//! what neither says is assumed (PyTorch's defaults) and reported, so that
//! each front end can tell its user how to say it.

use crate::config::CellKind;
use crate::error::{Error, Result};
use crate::tensor_file::TensorFile;
use crate::weights::{metadata_flag, Weights};
use crate::Element;

/// The caller's word on what the file may not say; `None`: the file's
/// metadata, else PyTorch's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelFacts {
    /// Inputs and outputs are `[B, T, ·]`.
    pub batch_first: Option<bool>,
    /// The cell, where the shapes cannot tell (`RnnTanh` or `RnnRelu`);
    /// given for another family, it must agree with the shapes.
    pub cell: Option<CellKind>,
    /// A GRU in the original formulation (`gru_linear_before_reset = false`).
    pub gru_original: Option<bool>,
    /// Inter-layer dropout for training: a setting of the caller's, not a
    /// property of the weights, so it replaces the file's without a
    /// contradiction.
    pub dropout: Option<f64>,
}

/// What was assumed because neither the file nor the caller said it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Assumed {
    /// `batch_first = false` (time-major input).
    pub batch_first: bool,
    /// `tanh` for a plain RNN.
    pub nonlinearity: bool,
}

/// Loads the network under `prefix` from `file` with `facts` applied.
pub fn load_weights<T: Element>(
    file: &TensorFile,
    prefix: Option<&str>,
    facts: &ModelFacts,
) -> Result<(Weights<T>, Assumed)> {
    let weights = Weights::<T>::from_tensor_file(file, prefix)?;
    let mut config = weights.config().clone();
    let path = file.path().display();
    let contradiction = |fact: String, key: &str, value: &str| {
        Error::Config(format!("{fact} contradicts {path}'s metadata {key} = {value}"))
    };
    let mut assumed = Assumed::default();

    let recorded = metadata_flag(file, "batch_first")?;
    match (facts.batch_first, recorded) {
        (Some(said), Some(recorded)) if said != recorded => {
            return Err(contradiction(
                format!("batch_first = {said}"),
                "batch_first",
                &recorded.to_string(),
            ))
        }
        (Some(said), _) => config.batch_first = said,
        (None, None) => assumed.batch_first = true,
        (None, Some(_)) => {}
    }

    let recorded_cell = file.metadata()?.get("cell").cloned();
    match facts.cell {
        Some(cell) => {
            if let Some(recorded) = recorded_cell.as_deref().filter(|r| *r != cell.name()) {
                return Err(contradiction(format!("cell = {cell}"), "cell", recorded));
            }
            if cell.gates() != config.gates() {
                return Err(Error::Config(format!(
                    "cell = {cell}: {cell} has {} gates per hidden unit, the weights in {path} have {} ({})",
                    cell.gates(),
                    config.gates(),
                    config.cell
                )));
            }
            config.cell = cell;
        }
        None => assumed.nonlinearity = recorded_cell.is_none() && config.cell == CellKind::RnnTanh,
    }

    if let Some(original) = facts.gru_original {
        if original && config.cell != CellKind::Gru {
            return Err(Error::Config(format!(
                "gru_original applies to a GRU; {path} holds {}",
                config.cell
            )));
        }
        let recorded = metadata_flag(file, "gru_linear_before_reset")?;
        if recorded == Some(original) {
            return Err(contradiction(
                format!("gru_original = {original}"),
                "gru_linear_before_reset",
                &original.to_string(),
            ));
        }
        if config.cell == CellKind::Gru {
            config.gru_linear_before_reset = !original;
        }
    }

    if let Some(dropout) = facts.dropout {
        config.dropout = dropout;
        config.validate()?;
    }

    if &config == weights.config() {
        return Ok((weights, assumed));
    }
    let named = weights
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.clone()))
        .collect();
    Ok((Weights::from_named(config, named)?, assumed))
}
