//! A converted model's codebooks read back from its initializers, and trained values written
//! into the same initializers: what `onnx-dlq finetune ORIGINAL CONVERTED OUT` works on. Each
//! converted layer is found by its `onnx-dlq/<layer>` metadata entry and the nodes its form
//! wrote (`lower::ops`, `lower::fused`, `lower::dense`; a fully connected layer as the 1×1 Conv
//! view `lower::fc` lowers, its bias slot holding calibration's shift). Γ, Λ's support and the
//! graph are read, never changed: only float initializers get new values.

use std::ops::Range;

use anyhow::{bail, ensure, Context, Result};

use crate::analysis::select::{self, ConvLayer};
use crate::codebook::dl::SparseCodes;
use crate::codebook::subspace::{self, Points};
use crate::codebook::{Codebook, Method, Sizes, SubspaceCodebook};
use crate::eval::seen;
use crate::lower::{packing, LayerSettings};
use crate::onnx::model::OnnxModel;
use crate::onnx::tensor;
use crate::proto::tensor_proto::DataType;
use crate::proto::NodeProto;

/// Where a layer's continuous values live in the converted model.
#[derive(Debug, Clone)]
enum Store {
    /// The fused and compact forms: atoms `[S, L, width]` (rows zero-padded to the widest
    /// subspace) and DL's coefficients `[S, K, α]`.
    Table {
        atoms: String,
        width: usize,
        coefficients: Option<String>,
    },
    /// The compact form's shared codebook: one `[K, N′]` palette (VQ), and its per-channel
    /// scales `[M, 1, 1, 1]` when it has them.
    Palette {
        atoms: String,
        scale: Option<String>,
    },
    /// The standard-operator form: the atoms' 1×1 Conv weights (one, or the head's and the
    /// tail's when N′ does not divide N) and one coefficient tensor `[1, S·K, 1, 1]` per Λ slot.
    Ops {
        atoms: Vec<String>,
        coefficients: Vec<String>,
    },
}

/// One converted layer of a file: the original layer, the codebook its initializers hold, and
/// where to write trained values back.
pub struct StoredLayer {
    pub layer: ConvLayer,
    pub codebook: Codebook,
    store: Store,
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

/// What a layer's nodes hold, in the codebook's terms.
struct Decoded {
    store: Store,
    atoms: Vec<Points>,
    codes: Option<Vec<SparseCodes>>,
    /// Γ per subspace, in column order (`subspace::column`).
    assignment: Vec<Vec<u32>>,
    /// A palette's per-channel scales.
    channel_scale: Option<Vec<f32>>,
    bias: Option<String>,
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
    let geometry = (shape, channels.as_slice(), settings.method);
    let decoded = match nodes.find("conv") {
        Some(conv) => read_table(&nodes, conv, geometry)?,
        None => read_ops(&nodes, geometry)?,
    };
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
    let shared = matches!(decoded.store, Store::Palette { .. });
    let mut codebook = assemble(
        decoded.atoms,
        decoded.codes,
        decoded.assignment,
        &channels,
        shape,
        settings,
        bias_shift,
    )?;
    codebook.shared = shared;
    codebook.channel_scale = decoded.channel_scale;
    // A float16 palette stays one when trained (the initializer keeps its type).
    if let Store::Palette { atoms, .. } = &decoded.store {
        codebook.f16_palette = converted
            .initializer(atoms)
            .is_some_and(|t| t.data_type == Some(DataType::Float16 as i32));
    }
    Ok(StoredLayer {
        layer,
        codebook,
        store: decoded.store,
        bias: decoded.bias,
        base_bias,
    })
}

type Geometry<'a> = ([usize; 4], &'a [Range<usize>], Method);

/// A layer's nodes and initializers in the converted model, by the names its lowering gave.
struct LayerNodes<'a> {
    model: &'a OnnxModel,
    prefix: String,
}

impl LayerNodes<'_> {
    fn named(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn find(&self, suffix: &str) -> Option<&NodeProto> {
        let name = self.named(suffix);
        self.model
            .graph()
            .node
            .iter()
            .find(|n| n.name.as_deref() == Some(name.as_str()))
    }

    fn node(&self, suffix: &str, op: &str) -> Result<&NodeProto> {
        let node = self.find(suffix).with_context(|| {
            format!(
                "no node `{}{suffix}`: the file's graph is not as onnx-dlq wrote it",
                self.prefix
            )
        })?;
        ensure!(
            node.op_type.as_deref() == Some(op),
            "node `{}{suffix}` is {}, expected {op}",
            self.prefix,
            node.op_type.as_deref().unwrap_or("?")
        );
        Ok(node)
    }

    /// The initializer `node` reads at `input`.
    fn input<'n>(&self, node: &'n NodeProto, input: usize) -> Result<&'n str> {
        match node.input.get(input).map(String::as_str) {
            Some(name) if !name.is_empty() => Ok(name),
            _ => bail!(
                "node `{}` has no input {input}",
                node.name.as_deref().unwrap_or("?")
            ),
        }
    }

    fn tensor(&self, name: &str) -> Result<&crate::proto::TensorProto> {
        self.model
            .initializer(name)
            .with_context(|| format!("`{name}` is not an initializer"))
    }

    fn floats(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.tensor(name)?;
        let values = self.model.tensor_f32(t)?;
        Ok((values.shape().to_vec(), values.iter().copied().collect()))
    }

    fn ints(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let t = self.tensor(name)?;
        Ok((tensor::dims(t)?, self.model.tensor_i64(t)?))
    }
}

/// The fused (`DlqConv`) and compact (Conv of a rebuilt kernel) forms: one table per part.
fn read_table(
    nodes: &LayerNodes,
    conv: &NodeProto,
    (shape, channels, method): Geometry,
) -> Result<Decoded> {
    let [m, _, kh, kw] = shape;
    let s_count = channels.len();
    let fused = conv.op_type.as_deref() == Some("DlqConv");
    let named = |suffix: &str| nodes.named(suffix);
    let (atoms_name, indices_name, coefficients_name, assignment_name, bias) = match fused {
        true => (
            nodes.input(conv, 1)?.to_string(),
            nodes.input(conv, 2).ok().map(str::to_string),
            nodes.input(conv, 3).ok().map(str::to_string),
            nodes.input(conv, 4)?.to_string(),
            nodes.input(conv, 5).ok().map(str::to_string),
        ),
        false => {
            let dl = method == Method::Dl;
            (
                named("atoms"),
                dl.then(|| named("atom_indices")),
                dl.then(|| named("coefficients")),
                named("assignment"),
                nodes.input(conv, 2).ok().map(str::to_string),
            )
        }
    };
    let (dims, data) = nodes.floats(&atoms_name)?;
    if dims.len() == 2 && !fused && method == Method::Vq {
        return read_palette(nodes, (dims, data), atoms_name, (shape, channels), bias);
    }
    ensure!(
        dims.len() == 3,
        "atoms `{atoms_name}` of shape {dims:?}, expected [S, L, width]"
    );
    ensure!(
        dims[0] == s_count,
        "atoms `{atoms_name}` hold {} subspaces, the layer has {s_count}",
        dims[0]
    );
    let (l, width) = (dims[1], dims[2]);
    let atoms = channels
        .iter()
        .enumerate()
        .map(|(s, ch)| {
            ensure!(
                ch.len() <= width,
                "atoms `{atoms_name}` rows of {width} values for {} channels",
                ch.len()
            );
            let rows = (0..l).flat_map(|a| data[(s * l + a) * width..][..ch.len()].iter().copied());
            Ok(Points {
                data: rows.collect(),
                dim: ch.len(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let codes = match (method, &indices_name, &coefficients_name) {
        (Method::Vq, ..) => None,
        (Method::Dl, Some(i), Some(c)) => Some(table_codes(nodes, i, c, s_count, l)?),
        (Method::Dl, ..) => bail!("a DL layer without atom indices and coefficients"),
    };
    let k = codes.as_ref().map_or(l, |c| c[0].len());
    let assignment = read_assignment(nodes, &assignment_name, [s_count, m, kh, kw], k)?;
    Ok(Decoded {
        store: Store::Table {
            atoms: atoms_name,
            width,
            coefficients: coefficients_name,
        },
        atoms,
        codes,
        assignment,
        channel_scale: None,
        bias,
    })
}

/// The compact form's palette (`[K, N′]`, every subspace's codebook) and Γ indexing it.
fn read_palette(
    nodes: &LayerNodes,
    (dims, data): (Vec<usize>, Vec<f32>),
    atoms_name: String,
    (shape, channels): ([usize; 4], &[Range<usize>]),
    bias: Option<String>,
) -> Result<Decoded> {
    let [m, _, kh, kw] = shape;
    let (k, width) = (dims[0], dims[1]);
    ensure!(
        channels.iter().all(|c| c.len() == width),
        "palette `{atoms_name}` of {width}-value rows, for subspaces of {:?} channels",
        channels.iter().map(|c| c.len()).collect::<Vec<_>>()
    );
    let assignment = read_assignment(
        nodes,
        &nodes.named("assignment"),
        [channels.len(), m, kh, kw],
        k,
    )?;
    let scale_name = nodes.named("channel_scale");
    let scale = match nodes.model.initializer(&scale_name) {
        Some(_) => {
            let (dims, values) = nodes.floats(&scale_name)?;
            ensure!(
                dims == [m, 1, 1, 1],
                "channel scales `{scale_name}` of shape {dims:?}, expected [{m}, 1, 1, 1]"
            );
            Some((scale_name, values))
        }
        None => None,
    };
    Ok(Decoded {
        store: Store::Palette {
            atoms: atoms_name,
            scale: scale.as_ref().map(|(n, _)| n.clone()),
        },
        channel_scale: scale.map(|(_, v)| v),
        atoms: vec![Points { data, dim: width }; channels.len()],
        codes: None,
        assignment,
        bias,
    })
}

/// Γ per subspace from the `[S, M, kh, kw]` initializer `name`, or from the bit-packed tensors
/// the compact form stores below 8 bits (`lower::packing`: `{name}_packed`, or its two planes
/// at 7 bits); each index below `k`.
fn read_assignment(
    nodes: &LayerNodes,
    name: &str,
    shape: [usize; 4],
    k: usize,
) -> Result<Vec<Vec<u32>>> {
    let [s_count, m, kh, kw] = shape;
    let count = s_count * m * kh * kw;
    let bits = packing::bits_for(k);
    let packed = packing::packed_names(name, bits);
    let gamma: Vec<i64> = match nodes.model.initializer(&packed[0]) {
        Some(_) => {
            let mut planes = Vec::with_capacity(packed.len());
            for p in &packed {
                let (_, bytes) = nodes.ints(p)?;
                planes.push(bytes.iter().map(|&b| b as u8).collect::<Vec<u8>>());
            }
            let values = match planes.as_slice() {
                [low, high] => packing::unpack_split(low, high, count),
                [one] => packing::unpack(one, bits, count),
                _ => None,
            };
            let values = values.with_context(|| {
                format!(
                    "`{}`: {} bytes do not hold {count} indices of {bits} bits",
                    packed.join("`, `"),
                    planes.iter().map(Vec::len).sum::<usize>()
                )
            })?;
            values.into_iter().map(i64::from).collect()
        }
        None => {
            let (adims, gamma) = nodes.ints(name)?;
            ensure!(
                adims == shape,
                "assignment `{name}` of shape {adims:?}, expected {shape:?}"
            );
            gamma
        }
    };
    gamma
        .chunks_exact(m * kh * kw)
        .map(|g| to_indices(g, 0, k, name))
        .collect()
}

/// Λ from `[S, K, α]` atom indices and coefficients.
fn table_codes(
    nodes: &LayerNodes,
    indices: &str,
    coefficients: &str,
    s_count: usize,
    l: usize,
) -> Result<Vec<SparseCodes>> {
    let (idims, idx) = nodes.ints(indices)?;
    let (cdims, coefs) = nodes.floats(coefficients)?;
    ensure!(
        idims.len() == 3 && idims[0] == s_count && cdims == idims,
        "atom indices `{indices}` {idims:?} and coefficients `{coefficients}` {cdims:?}, expected both [{s_count}, K, α]"
    );
    let per = idims[1] * idims[2];
    (0..s_count)
        .map(|s| {
            Ok(SparseCodes {
                alpha: idims[2],
                atoms: to_indices(&idx[s * per..][..per], 0, l, indices)?,
                coefs: coefs[s * per..][..per].to_vec(),
            })
        })
        .collect()
}

/// `values` less `offset`, each checked to be below `bound`.
fn to_indices(values: &[i64], offset: i64, bound: usize, what: &str) -> Result<Vec<u32>> {
    values
        .iter()
        .map(|&v| {
            let i = v - offset;
            ensure!(
                (0..bound as i64).contains(&i),
                "`{what}`: index {v} out of range (below {bound} after {offset})"
            );
            Ok(i as u32)
        })
        .collect()
}

/// The standard-operator form: the atoms' Conv, one Gather and Mul per Λ slot, one Gather per
/// kernel position, the bias Add.
fn read_ops(nodes: &LayerNodes, (shape, channels, method): Geometry) -> Result<Decoded> {
    let [m, _, kh, kw] = shape;
    let s_count = channels.len();
    let atom_convs = match nodes.find("atoms_head") {
        Some(_) => vec![
            nodes.node("atoms_head", "Conv")?,
            nodes.node("atoms_tail", "Conv")?,
        ],
        None => vec![nodes.node("atoms", "Conv")?],
    };
    let atom_names: Vec<String> = atom_convs
        .iter()
        .map(|n| nodes.input(n, 1).map(str::to_string))
        .collect::<Result<_>>()?;
    let mut flat = Vec::new();
    for name in &atom_names {
        flat.extend(nodes.floats(name)?.1);
    }
    let widths: usize = channels.iter().map(|c| c.len()).sum();
    ensure!(
        flat.len() % widths == 0,
        "atom weights of {} values for {widths} channels",
        flat.len()
    );
    let l = flat.len() / widths;
    let mut at = 0;
    let atoms: Vec<Points> = channels
        .iter()
        .map(|ch| {
            let data = flat[at..at + l * ch.len()].to_vec();
            at += l * ch.len();
            Points {
                data,
                dim: ch.len(),
            }
        })
        .collect();
    let (codes, coefficient_names) = match method {
        Method::Vq => (None, vec![]),
        Method::Dl => {
            let (codes, names) = ops_codes(nodes, s_count, l)?;
            (Some(codes), names)
        }
    };
    let k = codes.as_ref().map_or(l, |c| c[0].len());
    let mut assignment = vec![vec![0u32; m * kh * kw]; s_count];
    for u in 0..kh {
        for v in 0..kw {
            let gather = nodes.node(&format!("k{u}_{v}_lookup"), "Gather")?;
            let name = nodes.input(gather, 1)?;
            let (_, idx) = nodes.ints(name)?;
            ensure!(
                idx.len() == s_count * m,
                "`{name}`: {} indices, expected {}",
                idx.len(),
                s_count * m
            );
            for (s, g) in assignment.iter_mut().enumerate() {
                let reps = to_indices(&idx[s * m..][..m], (s * k) as i64, k, name)?;
                for (o, r) in reps.into_iter().enumerate() {
                    g[subspace::column(o, u, v, kh, kw)] = r;
                }
            }
        }
    }
    let bias = match nodes.find("output") {
        Some(add) if add.op_type.as_deref() == Some("Add") => {
            Some(nodes.input(add, 1)?.to_string())
        }
        _ => None,
    };
    Ok(Decoded {
        store: Store::Ops {
            atoms: atom_names,
            coefficients: coefficient_names,
        },
        atoms,
        codes,
        assignment,
        channel_scale: None,
        bias,
    })
}

/// Λ from the per-slot Gathers (global atom indices s·L + a) and Muls (coefficients).
fn ops_codes(
    nodes: &LayerNodes,
    s_count: usize,
    l: usize,
) -> Result<(Vec<SparseCodes>, Vec<String>)> {
    let mut slots = Vec::new();
    while let Some(gather) = nodes.find(&format!("term{}_atoms", slots.len())) {
        let t = slots.len();
        let (_, idx) = nodes.ints(nodes.input(gather, 1)?)?;
        let mul = nodes.node(&format!("term{t}"), "Mul")?;
        let name = nodes.input(mul, 1)?.to_string();
        let (_, coefs) = nodes.floats(&name)?;
        ensure!(
            idx.len() == coefs.len() && idx.len() % s_count == 0,
            "Λ slot {t}: {} atom indices and {} coefficients for {s_count} subspaces",
            idx.len(),
            coefs.len()
        );
        slots.push((idx, coefs, name));
    }
    ensure!(
        !slots.is_empty(),
        "a DL layer without Λ (no node `{}term0_atoms`)",
        nodes.prefix
    );
    let (alpha, k) = (slots.len(), slots[0].0.len() / s_count);
    let mut codes = Vec::with_capacity(s_count);
    for s in 0..s_count {
        let (mut atoms, mut coefs) = (vec![0u32; k * alpha], vec![0f32; k * alpha]);
        for (t, (idx, c, name)) in slots.iter().enumerate() {
            ensure!(
                idx.len() == s_count * k,
                "`{name}`: Λ slots of different sizes"
            );
            let a = to_indices(&idx[s * k..][..k], (s * l) as i64, l, name)?;
            for r in 0..k {
                atoms[r * alpha + t] = a[r];
                coefs[r * alpha + t] = c[s * k + r];
            }
        }
        codes.push(SparseCodes {
            alpha,
            atoms,
            coefs,
        });
    }
    Ok((codes, slots.into_iter().map(|s| s.2).collect()))
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
        let subspaces = &trained.subspaces;
        match &self.store {
            Store::Table {
                atoms,
                width,
                coefficients,
            } => {
                let l = trained.sizes.l;
                let mut table = vec![0f32; subspaces.len() * l * width];
                for (s, sc) in subspaces.iter().enumerate() {
                    for (a, row) in sc.atoms.data.chunks_exact(sc.atoms.dim).enumerate() {
                        table[(s * l + a) * width..][..row.len()].copy_from_slice(row);
                    }
                }
                set_initializer(model, atoms, &table)?;
                if let Some(name) = coefficients {
                    let coefs: Vec<f32> = subspaces
                        .iter()
                        .flat_map(|s| codes(s).coefs.iter().copied())
                        .collect();
                    set_initializer(model, name, &coefs)?;
                }
            }
            Store::Palette { atoms, scale } => {
                // One variable in training: every subspace's copy is the palette.
                set_initializer(model, atoms, &subspaces[0].atoms.data)?;
                if let (Some(name), Some(values)) = (scale, &trained.channel_scale) {
                    set_initializer(model, name, values)?;
                }
            }
            Store::Ops {
                atoms,
                coefficients,
            } => {
                let flat: Vec<f32> = subspaces
                    .iter()
                    .flat_map(|s| s.atoms.data.iter().copied())
                    .collect();
                let mut at = 0;
                for name in atoms {
                    let len = tensor::element_count(model.initializer(name).context("atoms")?)?;
                    set_initializer(model, name, &flat[at..at + len])?;
                    at += len;
                }
                for (t, name) in coefficients.iter().enumerate() {
                    let slot: Vec<f32> = subspaces
                        .iter()
                        .flat_map(|s| {
                            let c = codes(s);
                            c.coefs
                                .iter()
                                .skip(t)
                                .step_by(c.alpha)
                                .copied()
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    set_initializer(model, name, &slot)?;
                }
            }
        }
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

fn codes(s: &SubspaceCodebook) -> &SparseCodes {
    s.codes
        .as_ref()
        .expect("a DL codebook's subspaces have codes")
}

/// Replaces the values of initializer `name` (same shape and element type).
pub fn set_initializer(model: &mut OnnxModel, name: &str, values: &[f32]) -> Result<()> {
    let path = model.path.display().to_string();
    let t = model
        .graph_mut()
        .initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some(name))
        .with_context(|| format!("initializer `{name}` is not in {path}"))?;
    let dims = tensor::dims(t)?;
    let elem = tensor::FloatType::from_onnx(t.data_type.unwrap_or(0))
        .with_context(|| format!("initializer `{name}` is not a float tensor"))?;
    ensure!(
        dims.iter().product::<usize>() == values.len(),
        "initializer `{name}`: {} values for shape {dims:?}",
        values.len()
    );
    tensor::set_f32(t, &dims, values, elem);
    Ok(())
}
