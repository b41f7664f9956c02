//! A network's parameters in PyTorch's layout and under PyTorch's names, so
//! that a `state_dict` saved as safetensors loads unchanged:
//!
//! | name (layer `k`, suffix `_reverse` for the backward direction) | shape |
//! |---|---|
//! | `weight_ih_l{k}` | `[G*H, in]` (`in` = `input_size` for k = 0, else `D*Hout`) |
//! | `weight_hh_l{k}` | `[G*H, Hout]` |
//! | `bias_ih_l{k}`, `bias_hh_l{k}` | `[G*H]` (only with `bias`) |
//! | `weight_hr_l{k}` | `[Hout, H]` (LSTM with `proj_size` only) |
//!
//! Gate blocks are stacked in PyTorch's order: LSTM `i, f, g, o`; GRU `r, z, n`.

use crate::config::{CellKind, RnnConfig};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::tensor::Tensor;
use crate::tensor_file::{self, OwnedTensor, StoredDtype, TensorFile};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Which of a layer's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// `weight_ih_l{k}`: `[G·H, I]` (layer 0) or `[G·H, D·Hout]`.
    WeightIh,
    /// `weight_hh_l{k}`: `[G·H, Hout]`.
    WeightHh,
    /// `bias_ih_l{k}`: `[G·H]`.
    BiasIh,
    /// `bias_hh_l{k}`: `[G·H]`.
    BiasHh,
    /// `weight_hr_l{k}`: `[Hout, H]`, projections only.
    WeightHr,
}

impl ParamKind {
    /// PyTorch's name without the layer and direction suffix.
    pub fn base_name(self) -> &'static str {
        match self {
            ParamKind::WeightIh => "weight_ih",
            ParamKind::WeightHh => "weight_hh",
            ParamKind::BiasIh => "bias_ih",
            ParamKind::BiasHh => "bias_hh",
            ParamKind::WeightHr => "weight_hr",
        }
    }

    const ALL: [ParamKind; 5] = [
        ParamKind::WeightIh,
        ParamKind::WeightHh,
        ParamKind::BiasIh,
        ParamKind::BiasHh,
        ParamKind::WeightHr,
    ];
}

/// One parameter a configuration has: its PyTorch name and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// PyTorch's name, e.g. `weight_hh_l1_reverse`.
    pub name: String,
    /// Its layer.
    pub layer: usize,
    /// Its direction: 0 forward, 1 reverse.
    pub direction: usize,
    /// Which parameter of the layer.
    pub kind: ParamKind,
    /// Its shape.
    pub shape: Vec<usize>,
}

/// PyTorch's name for a parameter: `weight_hh_l1_reverse`.
pub fn param_name(kind: ParamKind, layer: usize, direction: usize) -> String {
    let reverse = if direction == 1 { "_reverse" } else { "" };
    format!("{}_l{layer}{reverse}", kind.base_name())
}

/// Every parameter of `config`, in PyTorch's `named_parameters()` order.
pub fn param_specs(config: &RnnConfig) -> Vec<ParamSpec> {
    let rows = config.gates() * config.hidden_size;
    let mut specs = Vec::new();
    for layer in 0..config.num_layers {
        for direction in 0..config.num_directions() {
            for kind in ParamKind::ALL {
                let shape = match kind {
                    ParamKind::WeightIh => vec![rows, config.layer_input_size(layer)],
                    ParamKind::WeightHh => vec![rows, config.output_size()],
                    ParamKind::BiasIh | ParamKind::BiasHh if config.bias => vec![rows],
                    ParamKind::WeightHr if config.proj_size > 0 => vec![config.proj_size, config.hidden_size],
                    _ => continue,
                };
                specs.push(ParamSpec {
                    name: param_name(kind, layer, direction),
                    layer,
                    direction,
                    kind,
                    shape,
                });
            }
        }
    }
    specs
}

/// The parameters of one layer in one direction.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights<T> {
    /// `[G·H, I or D·Hout]`.
    pub weight_ih: Tensor<T>,
    /// `[G·H, Hout]`.
    pub weight_hh: Tensor<T>,
    /// `[G·H]`, if the network has biases.
    pub bias_ih: Option<Tensor<T>>,
    /// `[G·H]`, if the network has biases.
    pub bias_hh: Option<Tensor<T>>,
    /// `[Hout, H]`, with projections.
    pub weight_hr: Option<Tensor<T>>,
}

impl<T> LayerWeights<T> {
    fn slot(&self, kind: ParamKind) -> Option<&Tensor<T>> {
        match kind {
            ParamKind::WeightIh => Some(&self.weight_ih),
            ParamKind::WeightHh => Some(&self.weight_hh),
            ParamKind::BiasIh => self.bias_ih.as_ref(),
            ParamKind::BiasHh => self.bias_hh.as_ref(),
            ParamKind::WeightHr => self.weight_hr.as_ref(),
        }
    }
}

/// A validated configuration and all its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights<T> {
    config: RnnConfig,
    /// Indexed by `layer * D + direction`, like the states.
    layers: Vec<LayerWeights<T>>,
}

impl<T: Element> Weights<T> {
    /// Builds the weights of `config`, asking `get` for each parameter in turn.
    /// Every tensor's shape is checked against the configuration.
    pub fn from_fn(config: RnnConfig, mut get: impl FnMut(&ParamSpec) -> Result<Tensor<T>>) -> Result<Self> {
        config.validate()?;
        let mut found: HashMap<String, Tensor<T>> = HashMap::new();
        for spec in param_specs(&config) {
            let tensor = get(&spec)?;
            if tensor.shape() != spec.shape.as_slice() {
                return Err(Error::shape(
                    &spec.name,
                    format!("{:?}", spec.shape),
                    tensor.shape(),
                ));
            }
            found.insert(spec.name, tensor);
        }
        let mut take = |kind, layer, direction| found.remove(&param_name(kind, layer, direction));
        let mut layers = Vec::with_capacity(config.num_states());
        for layer in 0..config.num_layers {
            for direction in 0..config.num_directions() {
                layers.push(LayerWeights {
                    weight_ih: take(ParamKind::WeightIh, layer, direction).expect("spec listed"),
                    weight_hh: take(ParamKind::WeightHh, layer, direction).expect("spec listed"),
                    bias_ih: take(ParamKind::BiasIh, layer, direction),
                    bias_hh: take(ParamKind::BiasHh, layer, direction),
                    weight_hr: take(ParamKind::WeightHr, layer, direction),
                });
            }
        }
        Ok(Weights { config, layers })
    }

    /// Weights from a name → tensor map (names without prefix). Missing names
    /// are errors; so are names that look like parameters this configuration
    /// does not have (a sign of a wrong configuration).
    pub fn from_named(config: RnnConfig, mut named: HashMap<String, Tensor<T>>) -> Result<Self> {
        config.validate()?;
        let expected: BTreeSet<String> = param_specs(&config).into_iter().map(|s| s.name).collect();
        if let Some(extra) = named.keys().filter(|n| !expected.contains(*n)).min() {
            return Err(Error::invalid(
                extra.as_str(),
                format!("not a parameter of this configuration ({})", describe(&config)),
            ));
        }
        let description = describe(&config);
        Self::from_fn(config, |spec| {
            named.remove(&spec.name).ok_or_else(|| Error::Missing {
                tensor: spec.name.clone(),
                context: format!("required by {description}"),
            })
        })
    }

    /// PyTorch's initialisation: every parameter uniform in `±1/√hidden_size`,
    /// from a seeded generator (the same seed gives the same weights).
    pub fn random(config: RnnConfig, seed: u64) -> Result<Self> {
        let bound = 1.0 / (config.hidden_size as f64).sqrt();
        let mut rng = SplitMix64::new(seed);
        Self::from_fn(config, |spec| {
            let count = spec.shape.iter().product();
            let data = (0..count)
                .map(|_| T::from_f64(rng.uniform(-bound, bound)))
                .collect();
            Tensor::new(spec.shape.clone(), data)
        })
    }

    /// The network these weights are for.
    pub fn config(&self) -> &RnnConfig {
        &self.config
    }

    /// The parameters of `layer` in `direction` (0 forward, 1 reverse).
    pub fn layer(&self, layer: usize, direction: usize) -> Result<&LayerWeights<T>> {
        let (layers, dirs) = (self.config.num_layers, self.config.num_directions());
        if layer >= layers || direction >= dirs {
            return Err(Error::Config(format!(
                "layer {layer} direction {direction} is outside the {layers} layers and {dirs} directions of {}",
                describe(&self.config)
            )));
        }
        Ok(self.layer_in_range(layer, direction))
    }

    /// [`Weights::layer`] for indices the caller took from the configuration.
    pub(crate) fn layer_in_range(&self, layer: usize, direction: usize) -> &LayerWeights<T> {
        &self.layers[layer * self.config.num_directions() + direction]
    }

    /// Every parameter with its PyTorch name, in `named_parameters()` order.
    pub fn named_parameters(&self) -> Vec<(String, &Tensor<T>)> {
        param_specs(&self.config)
            .into_iter()
            .map(|spec| {
                let tensor = self
                    .layer_in_range(spec.layer, spec.direction)
                    .slot(spec.kind)
                    .expect("spec listed");
                (spec.name, tensor)
            })
            .collect()
    }

    /// Every parameter with its PyTorch name, mutable in place (for an
    /// optimizer step): shapes cannot change, values can.
    pub fn named_parameters_mut(&mut self) -> Vec<(String, &mut Tensor<T>)> {
        let dirs = self.config.num_directions();
        let mut out = Vec::new();
        for (index, layer_weights) in self.layers.iter_mut().enumerate() {
            let name = |kind| param_name(kind, index / dirs, index % dirs);
            let LayerWeights {
                weight_ih,
                weight_hh,
                bias_ih,
                bias_hh,
                weight_hr,
            } = layer_weights;
            out.push((name(ParamKind::WeightIh), weight_ih));
            out.push((name(ParamKind::WeightHh), weight_hh));
            out.extend(bias_ih.as_mut().map(|t| (name(ParamKind::BiasIh), t)));
            out.extend(bias_hh.as_mut().map(|t| (name(ParamKind::BiasHh), t)));
            out.extend(weight_hr.as_mut().map(|t| (name(ParamKind::WeightHr), t)));
        }
        out
    }

    /// The same weights in another float type.
    pub fn cast<U: Element>(&self) -> Weights<U> {
        let cast = |t: &Option<Tensor<T>>| t.as_ref().map(Tensor::cast);
        Weights {
            config: self.config.clone(),
            layers: self
                .layers
                .iter()
                .map(|l| LayerWeights {
                    weight_ih: l.weight_ih.cast(),
                    weight_hh: l.weight_hh.cast(),
                    bias_ih: cast(&l.bias_ih),
                    bias_hh: cast(&l.bias_hh),
                    weight_hr: cast(&l.weight_hr),
                })
                .collect(),
        }
    }

    /// Loads weights from a safetensors file; see [`Weights::from_tensor_file`].
    pub fn load(path: impl AsRef<Path>, prefix: Option<&str>) -> Result<Self> {
        Self::from_tensor_file(&TensorFile::open(path)?, prefix)
    }

    /// Loads weights saved from PyTorch (`save_file(model.state_dict(), ...)`).
    ///
    /// `prefix` selects one module of a whole model (`"lstm"` or `"lstm."` for
    /// `lstm.weight_ih_l0`). Without it, the file's only network is found by
    /// its `*weight_ih_l0` tensor. The configuration comes from the tensors'
    /// names and shapes; `__metadata__` keys (see [`config_metadata`]) supply
    /// what shapes cannot tell (`cell` for `rnn_relu`, `batch_first`,
    /// `dropout`, `gru_linear_before_reset`) and must agree with the rest.
    pub fn from_tensor_file(file: &TensorFile, prefix: Option<&str>) -> Result<Self> {
        let names = file.names()?;
        let prefix = resolve_prefix(file, &names, prefix)?;
        let config = infer_config(file, &names, &prefix)?;
        let in_file = |name: &String| name.strip_prefix(&prefix).map(str::to_owned);
        let expected: BTreeSet<String> = param_specs(&config).into_iter().map(|s| s.name).collect();
        if let Some(extra) = names
            .iter()
            .filter_map(in_file)
            .find(|n| looks_like_parameter(n) && !expected.contains(n))
        {
            return Err(Error::invalid(
                format!("{prefix}{extra}"),
                format!(
                    "not a parameter of the configuration the file describes ({})",
                    describe(&config)
                ),
            ));
        }
        let description = describe(&config);
        Self::from_fn(config, |spec| {
            let full = format!("{prefix}{}", spec.name);
            let partner = match spec.kind {
                ParamKind::BiasIh => Some(ParamKind::BiasHh),
                ParamKind::BiasHh => Some(ParamKind::BiasIh),
                _ => None,
            }
            .map(|kind| format!("{prefix}{}", param_name(kind, spec.layer, spec.direction)));
            let tensor = file.float::<T>(&full)?.ok_or_else(|| Error::Missing {
                tensor: full.clone(),
                context: match &partner {
                    Some(partner) if names.contains(partner) => {
                        format!("biases come in pairs, and the file has {partner}")
                    }
                    _ => format!("required by {description}"),
                },
            })?;
            if tensor.shape() != spec.shape.as_slice() {
                return Err(Error::shape(full, format!("{:?}", spec.shape), tensor.shape()));
            }
            Ok(tensor)
        })
    }

    /// Saves the weights under PyTorch's names (after `prefix`, if any) in
    /// `dtype`, with the configuration in `__metadata__`.
    pub fn save(&self, path: impl AsRef<Path>, dtype: StoredDtype, prefix: Option<&str>) -> Result<()> {
        let prefix = normalize_prefix(prefix.unwrap_or(""));
        let tensors: Vec<(String, OwnedTensor)> = self
            .named_parameters()
            .into_iter()
            .map(|(name, tensor)| {
                let name = format!("{prefix}{name}");
                let tensor = OwnedTensor::try_float(&name, tensor, dtype)?;
                Ok((name, tensor))
            })
            .collect::<Result<_>>()?;
        tensor_file::write(path, &tensors, config_metadata(&self.config))
    }
}

/// A one-line description of a configuration for messages.
pub fn describe(config: &RnnConfig) -> String {
    let mut s = format!(
        "{} input_size={} hidden_size={} num_layers={}",
        config.cell, config.input_size, config.hidden_size, config.num_layers
    );
    if config.bidirectional {
        s.push_str(" bidirectional");
    }
    if !config.bias {
        s.push_str(" bias=false");
    }
    if config.proj_size > 0 {
        s.push_str(&format!(" proj_size={}", config.proj_size));
    }
    s
}

/// The `__metadata__` that describes `config` (all values are strings).
pub fn config_metadata(config: &RnnConfig) -> HashMap<String, String> {
    [
        ("cell", config.cell.name().to_string()),
        ("input_size", config.input_size.to_string()),
        ("hidden_size", config.hidden_size.to_string()),
        ("num_layers", config.num_layers.to_string()),
        ("bias", config.bias.to_string()),
        ("batch_first", config.batch_first.to_string()),
        ("dropout", config.dropout.to_string()),
        ("bidirectional", config.bidirectional.to_string()),
        ("proj_size", config.proj_size.to_string()),
        (
            "gru_linear_before_reset",
            config.gru_linear_before_reset.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn normalize_prefix(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('.') {
        prefix.to_string()
    } else {
        format!("{prefix}.")
    }
}

/// `weight_ih_l3`, `bias_hh_l0_reverse`, ...: a name shaped like a parameter.
fn looks_like_parameter(name: &str) -> bool {
    let name = name.strip_suffix("_reverse").unwrap_or(name);
    ParamKind::ALL.iter().any(|kind| {
        name.strip_prefix(kind.base_name())
            .and_then(|rest| rest.strip_prefix("_l"))
            .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The prefix (`"lstm."`, or `""`) of the network [`Weights::from_tensor_file`]
/// loads from `file` given `prefix`.
pub fn network_prefix(file: &TensorFile, prefix: Option<&str>) -> Result<String> {
    resolve_prefix(file, &file.names()?, prefix)
}

/// A boolean `__metadata__` entry of `file` (`true`/`false`, `True`/`False`,
/// `1`/`0`), `None` when absent.
pub fn metadata_flag(file: &TensorFile, key: &str) -> Result<Option<bool>> {
    file.metadata()?.get(key).map(|v| parse_bool(key, v)).transpose()
}

fn resolve_prefix(file: &TensorFile, names: &[String], prefix: Option<&str>) -> Result<String> {
    const ANCHOR: &str = "weight_ih_l0";
    if let Some(prefix) = prefix {
        let prefix = normalize_prefix(prefix);
        if !names.iter().any(|n| *n == format!("{prefix}{ANCHOR}")) {
            return Err(Error::Missing {
                tensor: format!("{prefix}{ANCHOR}"),
                context: format!(
                    "no recurrent network under prefix {prefix:?} in {}",
                    file.path().display()
                ),
            });
        }
        return Ok(prefix);
    }
    let candidates: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_suffix(ANCHOR))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .collect();
    match candidates.as_slice() {
        [only] => Ok(only.to_string()),
        [] => Err(Error::Missing {
            tensor: ANCHOR.into(),
            context: format!(
                "no recurrent network in {} (no tensor named *{ANCHOR})",
                file.path().display()
            ),
        }),
        many => Err(Error::file(
            file.path(),
            format!("holds several recurrent networks (prefixes {many:?}); choose one with a prefix"),
        )),
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value {
        "true" | "True" | "1" => Ok(true),
        "false" | "False" | "0" => Ok(false),
        _ => Err(Error::Config(format!(
            "metadata {key} = {value:?} is not true or false"
        ))),
    }
}

fn parse_number<N: std::str::FromStr>(key: &str, value: &str) -> Result<N> {
    value
        .trim()
        .parse()
        .map_err(|_| Error::Config(format!("metadata {key} = {value:?} is not a number")))
}

/// The configuration of the network under `prefix`, from shapes and metadata.
fn infer_config(file: &TensorFile, names: &[String], prefix: &str) -> Result<RnnConfig> {
    let metadata = file.metadata()?;
    let shape_of = |name: &str| -> Result<Option<Vec<usize>>> { file.shape(&format!("{prefix}{name}")) };
    let require_2d = |name: &str| -> Result<Vec<usize>> {
        let shape = shape_of(name)?.ok_or_else(|| Error::Missing {
            tensor: format!("{prefix}{name}"),
            context: "every recurrent network has it".into(),
        })?;
        if shape.len() != 2 {
            return Err(Error::shape(format!("{prefix}{name}"), "two dimensions", &shape));
        }
        Ok(shape)
    };

    let w_ih = require_2d("weight_ih_l0")?;
    let w_hh = require_2d("weight_hh_l0")?;
    let (rows, input_size, output_size) = (w_ih[0], w_ih[1], w_hh[1]);
    let hh_name = format!("{prefix}weight_hh_l0");
    if w_hh[0] != rows {
        return Err(Error::shape(
            hh_name,
            format!("[{rows}, Hout] (as many rows as {prefix}weight_ih_l0 {w_ih:?})"),
            &w_hh,
        ));
    }
    let (hidden_size, proj_size) = match shape_of("weight_hr_l0")? {
        Some(w_hr) if w_hr.len() == 2 => {
            if w_hr[0] != output_size {
                return Err(Error::shape(
                    hh_name,
                    format!(
                        "[{rows}, {}] (Hout = the projection size of {prefix}weight_hr_l0 {w_hr:?})",
                        w_hr[0]
                    ),
                    &w_hh,
                ));
            }
            (w_hr[1], w_hr[0])
        }
        Some(w_hr) => {
            return Err(Error::shape(
                format!("{prefix}weight_hr_l0"),
                "two dimensions",
                &w_hr,
            ))
        }
        None => (output_size, 0),
    };
    let named_cell: Option<CellKind> = metadata.get("cell").map(|name| name.parse()).transpose()?;
    let gates = if hidden_size > 0 && rows % hidden_size == 0 {
        rows / hidden_size
    } else {
        0
    };
    let cell_from_shapes = match gates {
        4 => CellKind::Lstm,
        3 => CellKind::Gru,
        1 => CellKind::RnnTanh,
        _ => {
            // weight_ih's rows are G·H; weight_hh's (or weight_hr's) columns
            // give H. Say which hidden sizes the rows allow.
            let allowed: Vec<String> = [(4, "lstm"), (3, "gru"), (1, "rnn")]
                .into_iter()
                .filter(|&(g, _)| named_cell.is_none_or(|c| c.gates() == g) && rows % g == 0)
                .map(|(g, cell)| format!("{} ({cell})", rows / g))
                .collect();
            let allowed = if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(" or ")
            };
            let (tensor, found, expected) = if proj_size > 0 {
                let w_hr = shape_of("weight_hr_l0")?.unwrap_or_default();
                (format!("{prefix}weight_hr_l0"), w_hr, format!("[{proj_size}, H]"))
            } else {
                (hh_name, w_hh.clone(), format!("[{rows}, H]"))
            };
            return Err(Error::shape(
                tensor,
                format!("{expected} with H = {allowed} (what {prefix}weight_ih_l0's {rows} rows allow)"),
                &found,
            ));
        }
    };
    let cell = match named_cell {
        Some(cell) => {
            if cell.gates() != gates {
                return Err(Error::Config(format!(
                    "metadata cell = {cell} has {} gates, but {prefix}weight_ih_l0 {w_ih:?} has {gates} per hidden unit",
                    cell.gates()
                )));
            }
            cell
        }
        None => cell_from_shapes,
    };
    let num_layers = (0..)
        .take_while(|k| names.iter().any(|n| *n == format!("{prefix}weight_ih_l{k}")))
        .count();
    let has = |name: &str| names.iter().any(|n| *n == format!("{prefix}{name}"));

    let mut config = RnnConfig {
        num_layers,
        // Biases come in pairs: either present means the layer has both.
        bias: has("bias_ih_l0") || has("bias_hh_l0"),
        bidirectional: has("weight_ih_l0_reverse"),
        proj_size,
        ..RnnConfig::new(cell, input_size, hidden_size)
    };
    if let Some(v) = metadata.get("batch_first") {
        config.batch_first = parse_bool("batch_first", v)?;
    }
    if let Some(v) = metadata.get("dropout") {
        config.dropout = parse_number("dropout", v)?;
    }
    if let Some(v) = metadata.get("gru_linear_before_reset") {
        config.gru_linear_before_reset = parse_bool("gru_linear_before_reset", v)?;
    }

    // Metadata that restates what the shapes say must agree with them.
    let checks: [(&str, String); 6] = [
        ("input_size", config.input_size.to_string()),
        ("hidden_size", config.hidden_size.to_string()),
        ("num_layers", config.num_layers.to_string()),
        ("proj_size", config.proj_size.to_string()),
        ("bias", config.bias.to_string()),
        ("bidirectional", config.bidirectional.to_string()),
    ];
    for (key, from_shapes) in checks {
        if let Some(value) = metadata.get(key) {
            let agrees = match key {
                "bias" | "bidirectional" => parse_bool(key, value)?.to_string() == from_shapes,
                _ => parse_number::<usize>(key, value)?.to_string() == from_shapes,
            };
            if !agrees {
                return Err(Error::Config(format!(
                    "metadata {key} = {value} disagrees with the tensors in the file, which say {from_shapes}"
                )));
            }
        }
    }
    config.validate()?;
    Ok(config)
}
