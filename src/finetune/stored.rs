//! A converted model's codebooks read back from its initializers, and trained values written
//! into the same initializers: what `onnx-dlq finetune ORIGINAL CONVERTED OUT` works on. Each
//! converted layer is found by its `onnx-dlq/<layer>` metadata entry and the nodes its form
//! wrote (each form's reader: `lower::{ops, fused, dense}::read`; a fully connected layer as the
//! 1×1 Conv view `lower::wiring::fc` lowers, its bias slot holding calibration's shift). Γ, Λ's support and the
//! graph are read, never changed: only float initializers get new values.

use std::ops::Range;

use anyhow::{ensure, Context, Result};

use crate::analysis::select::{self, ConvLayer};
use crate::codebook::dl::SparseCodes;
use crate::codebook::subspace::Points;
use crate::codebook::{Codebook, Method, Sizes, SubspaceCodebook};
use crate::eval::seen;
use crate::lower::stored::{LayerNodes, StoredShape, StoredValues};
use crate::lower::{LayerSettings, OutputForm};
use crate::onnx::model::OnnxModel;

pub use crate::lower::stored::set_initializer;

/// One converted layer of a file: the original layer, the codebook its initializers hold, and
/// where to write trained values back.
pub struct StoredLayer {
    pub layer: ConvLayer,
    pub codebook: Codebook,
    values: Box<dyn StoredValues>,
    /// The initializer the layer's output adds as bias, when its form holds one.
    bias: Option<String>,
    /// The original layer's bias (zeros without one): the codebook's shift is relative to it.
    pub base_bias: Vec<f32>,
}

/// The layers `converted` records as converted from `original`, in the order recorded.
pub fn read(original: &OnnxModel, converted: &OnnxModel) -> Result<Vec<StoredLayer>> {
    let path = converted.path.display();
    let recorded = recorded_layers(converted)?;
    ensure!(
        !recorded.is_empty(),
        "{path}: no layer converted by onnx-dlq (no `onnx-dlq/<layer>` metadata entry); give a model `onnx-dlq convert` wrote"
    );
    let layers = select::conv_layers(original);
    recorded
        .into_iter()
        .map(|(name, settings)| {
            let layer = layers.iter().find(|l| l.name == name).with_context(|| {
                format!(
                    "{path} records layer `{name}` as converted, but {} has no such layer: give the model it was converted from",
                    original.path.display()
                )
            })?;
            read_layer(original, converted, layer.clone(), &settings)
                .with_context(|| format!("{path}: converted layer `{name}`"))
        })
        .collect()
}

/// The `onnx-dlq/<layer>` entries of `model`'s metadata with their settings.
fn recorded_layers(model: &OnnxModel) -> Result<Vec<(String, LayerSettings)>> {
    let mut out = Vec::new();
    for p in &model.proto.metadata_props {
        let (Some(key), Some(value)) = (&p.key, &p.value) else {
            continue;
        };
        let Some(layer) = key.strip_prefix("onnx-dlq/") else {
            continue;
        };
        // Not layers: the version, and the images conversion learnt from (`eval::seen`).
        if layer == "version" || key.starts_with(seen::KEY_PREFIX) {
            continue;
        }
        let settings: LayerSettings = serde_json::from_str(value)
            .with_context(|| format!("metadata entry `{key}` is not onnx-dlq's layer settings"))?;
        out.push((layer.to_string(), settings));
    }
    Ok(out)
}

fn read_layer(
    original: &OnnxModel,
    converted: &OnnxModel,
    layer: ConvLayer,
    settings: &LayerSettings,
) -> Result<StoredLayer> {
    // The kernel's shape as the analysis read it (no need to decode the weight).
    let shape: [usize; 4] = layer
        .kernel
        .as_deref()
        .and_then(|k| k.try_into().ok())
        .context("not a 2-D convolution with a constant kernel")?;
    let n = shape[1];
    ensure!(settings.subspace >= 1, "metadata: subspace N′ = 0");
    let channels: Vec<Range<usize>> = (0..n)
        .step_by(settings.subspace)
        .map(|c| c..(c + settings.subspace).min(n))
        .collect();
    let nodes = LayerNodes {
        model: converted,
        prefix: format!("{}/dlq/", layer.name),
    };
    // The compact form keeps a fully connected node and rebuilds its weight (`dense::finish_fc`).
    ensure!(
        layer.fc.is_none() || nodes.find("fc").is_none(),
        "a fully connected layer in the compact form, which `finetune` does not read back yet; fine-tune it during the conversion ({})",
        crate::setting::name(crate::setting::Setting::Finetune)
    );
    let stored_shape = StoredShape {
        kernel: shape,
        channels: &channels,
        method: settings.method,
    };
    let decoded = OutputForm::ALL
        .iter()
        .find_map(|form| form.spec().read(&nodes, stored_shape))
        .context("no output form wrote these nodes")??;
    let base_bias = original_bias(original, &layer, shape[0])?;
    let bias_shift = match &decoded.bias {
        Some(name) => {
            let (_, stored) = nodes.floats(name)?;
            ensure!(
                stored.len() == shape[0],
                "bias `{name}`: {} values for {} output channels",
                stored.len(),
                shape[0]
            );
            Some(stored.iter().zip(&base_bias).map(|(s, b)| s - b).collect())
        }
        None => None,
    };
    let mut codebook = assemble(
        decoded.atoms,
        decoded.codes,
        decoded.assignment,
        &channels,
        shape,
        settings,
        bias_shift,
    )?;
    codebook.shared = decoded.shared;
    codebook.channel_scale = decoded.channel_scale;
    codebook.f16_palette = decoded.f16_palette;
    Ok(StoredLayer {
        layer,
        codebook,
        values: decoded.values,
        bias: decoded.bias,
        base_bias,
    })
}

fn assemble(
    atoms: Vec<Points>,
    codes: Option<Vec<SparseCodes>>,
    assignment: Vec<Vec<u32>>,
    channels: &[Range<usize>],
    kernel_shape: [usize; 4],
    settings: &LayerSettings,
    bias_shift: Option<Vec<f32>>,
) -> Result<Codebook> {
    let l = atoms[0].len();
    let k = codes.as_ref().map_or(l, |c| c[0].len());
    ensure!(
        settings.method == Method::Vq || (settings.k, settings.l) == (k, l),
        "the metadata records K = {}, L = {}; the initializers hold K = {k}, L = {l}",
        settings.k,
        settings.l
    );
    let mut codes = codes.map(|c| c.into_iter());
    let subspaces = channels
        .iter()
        .zip(atoms)
        .zip(assignment)
        .map(|((ch, atoms), assignment)| SubspaceCodebook {
            channels: ch.clone(),
            atoms,
            codes: codes.as_mut().and_then(|c| c.next()),
            assignment,
        })
        .collect();
    Ok(Codebook {
        method: settings.method,
        kernel_shape,
        sizes: Sizes {
            k_vq: settings.k_vq,
            k,
            l,
            subspaces: channels.len(),
        },
        shared: false,
        subspaces,
        channel_scale: None,
        f16_palette: false,
        bias_shift,
    })
}

/// The layer's bias in `model` (zeros when it has none).
pub fn original_bias(model: &OnnxModel, layer: &ConvLayer, m: usize) -> Result<Vec<f32>> {
    let Some(name) = &layer.bias else {
        return Ok(vec![0.0; m]);
    };
    let t = model.initializer(name).with_context(|| {
        format!(
            "layer `{}`: bias `{name}` is not an initializer",
            layer.name
        )
    })?;
    let b: Vec<f32> = model.tensor_f32(t)?.iter().copied().collect();
    ensure!(
        b.len() == m,
        "layer `{}`: bias of {} values, {m} expected",
        layer.name,
        b.len()
    );
    Ok(b)
}

impl StoredLayer {
    /// Whether the form holds a bias that training may change (it has none when neither the
    /// layer nor calibration gave one).
    pub fn has_bias(&self) -> bool {
        self.bias.is_some()
    }

    /// Writes `trained` (this layer's codebook with new continuous values) into `model`'s
    /// initializers, each keeping its shape and element type.
    pub fn write(&self, model: &mut OnnxModel, trained: &Codebook) -> Result<()> {
        self.values.write(model, trained)?;
        if let Some(name) = &self.bias {
            let shift = trained.bias_shift.as_deref().unwrap_or(&[]);
            let bias: Vec<f32> = self
                .base_bias
                .iter()
                .enumerate()
                .map(|(i, b)| b + shift.get(i).copied().unwrap_or(0.0))
                .collect();
            set_initializer(model, name, &bias)?;
        }
        Ok(())
    }
}
