//! tract, the pure-Rust fallback: no library to install, CPU only, slower.

use std::io::Cursor;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;
use tract_onnx::tract_hir::infer::Factoid;

use super::{
    check_features_output_shape, check_input_len, check_input_shape, check_layer_output_shape, check_output_shape,
    Backend, BackendInfo, DeclaredDim, FEATURES_OUTPUT_NAME, INPUT_NAME, LAYER_OUTPUT_NAME, OUTPUT_NAME,
};
use crate::error::ModelError;
use crate::spec::ModelSpec;

const BACKEND: &str = "tract";

/// A graph optimised by tract for the spec's static input shape.
pub struct TractBackend {
    info: BackendInfo,
    /// The plan's state, reused run after run.
    state: TypedSimpleState,
    input_shape: [usize; 4],
    output_index: usize,
    /// Where `layer_logits` is among the outputs, when the spec has a layer head.
    layer_output_index: Option<usize>,
    /// The last run's layer logits (empty without a head).
    layer_logits: Vec<f32>,
    /// Where `features` is among the outputs, when the spec has them (the domain check).
    features_output_index: Option<usize>,
    /// The last run's features (empty without them).
    features: Vec<f32>,
    /// The last run's outputs: `infer` returns the logits from here, without a copy.
    outputs: TVec<TValue>,
    input_len: usize,
    logits_len: usize,
}

impl TractBackend {
    /// Parses `graph`, fixes its input to `[1, C, H, W]` from `spec`, checks the output is
    /// `[1, M, K, H, W]`, and optimises it. `detail` goes into [`BackendInfo::detail`] (why tract).
    pub fn load(graph: &[u8], spec: &ModelSpec, detail: String) -> Result<Self, ModelError> {
        spec.validate()?;
        let graph_error = |what: &str, e: TractError| ModelError::Graph {
            backend: BACKEND,
            reason: format!("{what}: {e:#}"),
        };
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut Cursor::new(graph))
            .map_err(|e| graph_error("reading the ONNX graph", e))?;

        // The contract: one input `image`, an output `logits`.
        let input_names: Vec<String> = model
            .input_outlets()
            .map_err(|e| graph_error("inputs", e))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        if input_names.len() != 1 || input_names[0] != INPUT_NAME {
            return Err(ModelError::Contract(format!(
                "graph inputs are {input_names:?}, the contract is one input `{INPUT_NAME}`"
            )));
        }
        let output_names: Vec<String> = model
            .output_outlets()
            .map_err(|e| graph_error("outputs", e))?
            .iter()
            .map(|&o| {
                model
                    .outlet_label(o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        let output_index = output_names.iter().position(|n| n == OUTPUT_NAME).ok_or_else(|| {
            ModelError::Contract(format!(
                "graph has no output named `{OUTPUT_NAME}` (its outputs: {output_names:?})"
            ))
        })?;

        let layer_output_index = if spec.layer_head.is_some() {
            Some(
                output_names
                    .iter()
                    .position(|n| n == LAYER_OUTPUT_NAME)
                    .ok_or_else(|| {
                        ModelError::Contract(format!(
                            "the manifest has a layer head but the graph has no output named \
                             `{LAYER_OUTPUT_NAME}` (its outputs: {output_names:?})"
                        ))
                    })?,
            )
        } else {
            None
        };

        let features_output_index = match spec.features {
            Some(_) => Some(
                output_names
                    .iter()
                    .position(|n| n == FEATURES_OUTPUT_NAME)
                    .ok_or_else(|| {
                        ModelError::Contract(format!(
                            "the manifest has a [domain] table but the graph has no output named \
                             `{FEATURES_OUTPUT_NAME}` (its outputs: {output_names:?})"
                        ))
                    })?,
            ),
            None => None,
        };

        // What the graph itself declares, before the spec's shape is imposed on it.
        let declared = model.input_fact(0).map_err(|e| graph_error("input", e))?;
        if !declared.shape.is_open() {
            let dims: Vec<DeclaredDim> = declared
                .shape
                .dims()
                .map(|d| d.concretize().and_then(|d| d.as_usize()))
                .collect();
            check_input_shape(&dims, spec)?;
        }

        let input = &spec.input;
        let input_shape = [
            1usize,
            input.channels as usize,
            input.height as usize,
            input.width as usize,
        ];
        model
            .set_input_fact(0, f32::fact(input_shape).into())
            .map_err(|e| graph_error("setting the input shape", e))?;
        let model = model.into_optimized().map_err(|e| graph_error("optimising", e))?;
        let output_fact = model.output_fact(output_index).map_err(|e| graph_error("output", e))?;
        if output_fact.datum_type != f32::datum_type() {
            return Err(ModelError::Contract(format!(
                "graph output `{OUTPUT_NAME}` is {:?}, the contract is float32",
                output_fact.datum_type
            )));
        }
        let output_dims: Vec<DeclaredDim> = output_fact.shape.iter().map(|d| d.as_usize()).collect();
        check_output_shape(&output_dims, spec)?;
        if output_dims.iter().any(Option::is_none) {
            return Err(ModelError::Contract(format!(
                "graph output `{OUTPUT_NAME}` has shape {:?} that does not follow from the input shape",
                output_fact.shape
            )));
        }
        if let Some(index) = layer_output_index {
            let fact = model.output_fact(index).map_err(|e| graph_error("layer output", e))?;
            if fact.datum_type != f32::datum_type() {
                return Err(ModelError::Contract(format!(
                    "graph output `{LAYER_OUTPUT_NAME}` is {:?}, the contract is float32",
                    fact.datum_type
                )));
            }
            let dims: Vec<DeclaredDim> = fact.shape.iter().map(|d| d.as_usize()).collect();
            check_layer_output_shape(&dims, spec)?;
        }
        if let Some(index) = features_output_index {
            let fact = model
                .output_fact(index)
                .map_err(|e| graph_error("features output", e))?;
            if fact.datum_type != f32::datum_type() {
                return Err(ModelError::Contract(format!(
                    "graph output `{FEATURES_OUTPUT_NAME}` is {:?}, the contract is float32",
                    fact.datum_type
                )));
            }
            let dims: Vec<DeclaredDim> = fact.shape.iter().map(|d| d.as_usize()).collect();
            check_features_output_shape(&dims, spec)?;
        }
        let plan = model.into_runnable().map_err(|e| graph_error("planning", e))?;
        let state = plan.spawn().map_err(|e| graph_error("state", e))?;
        Ok(TractBackend {
            info: BackendInfo {
                name: BACKEND.into(),
                execution_provider: BACKEND.into(),
                detail,
            },
            state,
            input_shape,
            output_index,
            layer_output_index,
            layer_logits: vec![0.0; spec.layer_logits_len()],
            features_output_index,
            features: vec![0.0; spec.features_len()],
            outputs: TVec::new(),
            input_len: spec.input.len(),
            logits_len: spec.logits_len(),
        })
    }
}

impl Backend for TractBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn infer(&mut self, input: &[f32]) -> Result<&[f32], ModelError> {
        check_input_len(BACKEND, input, self.input_len)?;
        let inference_error = |e: TractError| ModelError::Inference {
            backend: BACKEND,
            reason: format!("{e:#}"),
        };
        // tract consumes its input, so this is one copy per layer.
        let tensor = Tensor::from_shape(&self.input_shape, input).map_err(inference_error)?;
        let outputs = self.state.run(tvec!(tensor.into())).map_err(inference_error)?;
        let logits = &outputs[self.output_index];
        if logits.len() != self.logits_len {
            return Err(ModelError::Contract(format!(
                "graph returned logits of shape {:?}",
                logits.shape()
            )));
        }
        if let Some(index) = self.layer_output_index {
            let view = outputs[index].to_plain_array_view::<f32>().map_err(inference_error)?;
            if view.len() != self.layer_logits.len() {
                return Err(ModelError::Contract(format!(
                    "graph returned `{LAYER_OUTPUT_NAME}` of shape {:?}",
                    view.shape()
                )));
            }
            self.layer_logits.iter_mut().zip(view.iter()).for_each(|(l, v)| *l = *v);
        }
        if let Some(index) = self.features_output_index {
            let view = outputs[index].to_plain_array_view::<f32>().map_err(inference_error)?;
            if view.len() != self.features.len() {
                return Err(ModelError::Contract(format!(
                    "graph returned `{FEATURES_OUTPUT_NAME}` of shape {:?}",
                    view.shape()
                )));
            }
            self.features.iter_mut().zip(view.iter()).for_each(|(f, v)| *f = *v);
        }
        // Kept until the next run; the logits are read where tract wrote them (a tract tensor is
        // one contiguous buffer).
        self.outputs = outputs;
        self.outputs[self.output_index]
            .try_as_plain_ram()
            .and_then(|plain| plain.as_slice::<f32>())
            .map_err(inference_error)
    }

    fn layer_logits(&self) -> &[f32] {
        &self.layer_logits
    }

    fn features(&self) -> &[f32] {
        &self.features
    }
}
