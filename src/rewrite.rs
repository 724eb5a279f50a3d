//! Graph surgery: each converted Conv becomes a subgraph of standard ONNX operators, valid at the
//! model's own opset, that computes a Conv with the reconstructed kernel W̃ while performing the
//! paper's reduced number of multiplications:
//!
//! 1. `Z`  = grouped 1×1 Conv of the input with the atoms (DL) or centroids (VQ): S·L planes;
//! 2. `R`  = representative responses, Σ over α slots of Gather(Z, atom) · coefficient: S·K
//!    planes (VQ: `R = Z`);
//! 3. `R` is zero-padded as the Conv pads its input;
//! 4. for each kernel position (u, v): a strided spatial Slice of `R` (the shift), a channel
//!    Gather by Γ (S·M planes), accumulated with Add;
//! 5. the S subspace partial sums (channel slices of M) are summed, then the bias is added.
//!
//! The largest intermediate holds max(S·K, S·M) planes; the p²·M·S looked-up planes are never
//! all alive at once. Edits are collected in a [`GraphPatch`] and applied in one place.

use std::collections::HashSet;

use anyhow::{bail, ensure, Context, Result};

use crate::codebook::{Codebook, Method};
use crate::conv::ConvAttrs;
use crate::model::OnnxModel;
use crate::proto::attribute_proto::AttributeType;
use crate::proto::{
    tensor_shape_proto, type_proto, AttributeProto, NodeProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::select::ConvLayer;
use crate::shapes::ShapeMap;
use crate::tensor::{self, FloatType};

/// The oldest default-domain opset the lowering emits operators for.
pub const MIN_OPSET: i64 = 7;

/// The replacement of one Conv node.
#[derive(Debug, Clone)]
pub struct LayerPatch {
    pub node_index: usize,
    pub layer: String,
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    /// Initializers the Conv used (weight, bias): removed when nothing else uses them.
    pub released: Vec<String>,
    /// `metadata_props` entry recording what was done.
    pub metadata: (String, String),
}

/// All edits of a conversion, applied together by [`apply`].
#[derive(Debug, Clone, Default)]
pub struct GraphPatch {
    pub layers: Vec<LayerPatch>,
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_str(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

/// Emits nodes and initializers named `{layer}/dlq/...`, choosing operator forms by opset.
struct Builder<'a> {
    prefix: String,
    opset: i64,
    elem: FloatType,
    taken: &'a HashSet<String>,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    /// Small INT64 constants (slice bounds, axes, pads) are shared within a layer.
    i64_consts: std::collections::HashMap<Vec<i64>, String>,
}

impl Builder<'_> {
    fn name(&self, what: &str) -> Result<String> {
        let n = format!("{}/dlq/{what}", self.prefix);
        ensure!(
            !self.taken.contains(&n),
            "the model already has a tensor or node called `{n}`"
        );
        Ok(n)
    }

    fn node(
        &mut self,
        op: &str,
        what: &str,
        inputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) -> Result<String> {
        let out = self.name(what)?;
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![out.clone()],
            name: Some(out.clone()),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
        Ok(out)
    }

    fn float_init(&mut self, what: &str, shape: &[usize], values: &[f32]) -> Result<String> {
        let n = self.name(what)?;
        self.inits
            .push(tensor::new_tensor(&n, shape, values, self.elem));
        Ok(n)
    }

    fn i64_init(&mut self, what: &str, values: &[i64]) -> Result<String> {
        if let Some(n) = self.i64_consts.get(values) {
            return Ok(n.clone());
        }
        let n = self.name(what)?;
        self.inits
            .push(tensor::new_i64_tensor(&n, &[values.len()], values));
        self.i64_consts.insert(values.to_vec(), n.clone());
        Ok(n)
    }

    /// Slice on `axes`; `steps` other than 1 need opset 10 (callers subsample otherwise).
    fn slice(
        &mut self,
        what: &str,
        x: &str,
        axes: &[i64],
        starts: &[i64],
        ends: &[i64],
        steps: &[i64],
    ) -> Result<String> {
        if self.opset >= 10 {
            let mut inputs = vec![
                x.to_string(),
                self.i64_init(&format!("{what}_starts"), starts)?,
                self.i64_init(&format!("{what}_ends"), ends)?,
                self.i64_init(&format!("{what}_axes"), axes)?,
            ];
            if steps.iter().any(|&s| s != 1) {
                inputs.push(self.i64_init(&format!("{what}_steps"), steps)?);
            }
            self.node("Slice", what, inputs, vec![])
        } else {
            ensure!(
                steps.iter().all(|&s| s == 1),
                "internal: Slice steps need opset 10"
            );
            self.node(
                "Slice",
                what,
                vec![x.to_string()],
                vec![
                    attr_ints("axes", axes),
                    attr_ints("starts", starts),
                    attr_ints("ends", ends),
                ],
            )
        }
    }

    /// Zero padding of the two spatial axes: `pads` = [top, left, bottom, right].
    fn pad(&mut self, what: &str, x: &str, pads: [i64; 4]) -> Result<String> {
        let full = [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]];
        if self.opset >= 11 {
            let p = self.i64_init(&format!("{what}_pads"), &full)?;
            self.node("Pad", what, vec![x.to_string(), p], vec![])
        } else {
            self.node(
                "Pad",
                what,
                vec![x.to_string()],
                vec![attr_ints("pads", &full), attr_str("mode", "constant")],
            )
        }
    }

    /// Gather along channels; indices are INT32 (every opset allows it) to keep files small.
    fn gather(&mut self, what: &str, x: &str, indices: &[i64]) -> Result<String> {
        let idx = self.name(&format!("{what}_indices"))?;
        let narrow: Vec<i32> = indices
            .iter()
            .map(|&i| i32::try_from(i).expect("channel index fits in i32"))
            .collect();
        self.inits
            .push(tensor::new_i32_tensor(&idx, &[narrow.len()], &narrow));
        self.node(
            "Gather",
            what,
            vec![x.to_string(), idx],
            vec![attr_int("axis", 1)],
        )
    }

    fn conv1x1(
        &mut self,
        what: &str,
        x: &str,
        weights: &[f32],
        shape: [usize; 4],
        group: usize,
    ) -> Result<String> {
        let w = self.float_init(&format!("{what}_weight"), &shape, weights)?;
        let mut attrs = vec![
            attr_ints("kernel_shape", &[1, 1]),
            attr_ints("strides", &[1, 1]),
            attr_ints("pads", &[0, 0, 0, 0]),
        ];
        if group > 1 {
            attrs.push(attr_int("group", group as i64));
        }
        self.node("Conv", what, vec![x.to_string(), w], attrs)
    }
}

/// Names of every node, tensor and initializer already in the graph.
fn taken_names(model: &OnnxModel) -> HashSet<String> {
    let g = model.graph();
    let mut names = HashSet::new();
    for n in &g.node {
        names.extend(n.name.iter().cloned());
        names.extend(n.input.iter().cloned());
        names.extend(n.output.iter().cloned());
    }
    names.extend(g.initializer.iter().filter_map(|t| t.name.clone()));
    names.extend(
        g.input
            .iter()
            .chain(&g.output)
            .chain(&g.value_info)
            .filter_map(|v| v.name.clone()),
    );
    names
}

/// Builds the replacement of `layer` from its codebook. `shapes` gives the input and output
/// spatial sizes (the lowering is specialised to them, like `auto_pad` resolution is).
pub fn lower(
    model: &OnnxModel,
    layer: &ConvLayer,
    codebook: &Codebook,
    shapes: &ShapeMap,
    settings: &str,
) -> Result<LayerPatch> {
    let ctx = || format!("layer `{}` (node {} Conv)", layer.name, layer.node_index);
    layer
        .eligibility
        .clone()
        .map_err(anyhow::Error::msg)
        .with_context(ctx)?;
    let opset = model.default_opset();
    ensure!(
        opset >= MIN_OPSET,
        "{}: the model's opset {opset} is older than {MIN_OPSET}, which onnx-dlq needs",
        ctx()
    );
    let attrs: &ConvAttrs = layer
        .attrs
        .as_ref()
        .expect("eligible layers have attributes");
    let [m, n, kh, kw] = codebook.kernel_shape;
    ensure!(
        layer.kernel.as_deref() == Some(&codebook.kernel_shape[..]),
        "{}: codebook is for a {:?} kernel",
        ctx(),
        codebook.kernel_shape
    );
    let in_shape = shapes
        .get(&layer.input)
        .with_context(|| format!("{}: the shape of input `{}` is unknown", ctx(), layer.input))?;
    ensure!(
        in_shape.len() == 4,
        "{}: input `{}` has shape {in_shape:?}, expected 4-D",
        ctx(),
        layer.input
    );
    let (h, w) = (in_shape[2], in_shape[3]);
    let out_hw = attrs.output_size(&[h, w], &[kh, kw]).with_context(ctx)?;
    let pads = attrs.resolved_pads(&[h, w], &[kh, kw]);
    let elem = layer
        .weight_type
        .expect("eligible layers have float weights");
    let taken = taken_names(model);
    let mut b = Builder {
        prefix: layer.name.clone(),
        opset,
        elem,
        taken: &taken,
        nodes: vec![],
        inits: vec![],
        i64_consts: Default::default(),
    };

    let s_count = codebook.subspaces.len();
    let atoms_per = codebook.subspaces[0].atoms.len();
    let reps_per = codebook.subspaces[0].num_representatives();
    ensure!(
        codebook
            .subspaces
            .iter()
            .all(|s| s.atoms.len() == atoms_per && s.num_representatives() == reps_per),
        "{}: subspaces have different codebook sizes",
        ctx()
    );

    // 1. Atom (or centroid) responses Z: [B, S·L, H, W].
    let x = layer.input.as_str();
    let first = &codebook.subspaces[0];
    let equal = codebook
        .subspaces
        .iter()
        .all(|s| s.channels.len() == first.channels.len());
    let z = if equal {
        let data: Vec<f32> = codebook
            .subspaces
            .iter()
            .flat_map(|s| s.atoms.data.iter().copied())
            .collect();
        b.conv1x1(
            "atoms",
            x,
            &data,
            [s_count * atoms_per, first.channels.len(), 1, 1],
            s_count,
        )?
    } else {
        // N′ does not divide N: the full subspaces as one grouped Conv, the last on its own.
        let full = &codebook.subspaces[..s_count - 1];
        let last = &codebook.subspaces[s_count - 1];
        let split = last.channels.start as i64;
        let head = b.slice("input_head", x, &[1], &[0], &[split], &[1])?;
        let tail = b.slice("input_tail", x, &[1], &[split], &[i64::MAX], &[1])?;
        let data: Vec<f32> = full
            .iter()
            .flat_map(|s| s.atoms.data.iter().copied())
            .collect();
        let z_head = b.conv1x1(
            "atoms_head",
            &head,
            &data,
            [full.len() * atoms_per, first.channels.len(), 1, 1],
            full.len(),
        )?;
        let z_tail = b.conv1x1(
            "atoms_tail",
            &tail,
            &last.atoms.data,
            [atoms_per, last.channels.len(), 1, 1],
            1,
        )?;
        b.node(
            "Concat",
            "atoms",
            vec![z_head, z_tail],
            vec![attr_int("axis", 1)],
        )?
    };

    // 2. Representative responses R: [B, S·K, H, W].
    let r = match codebook.method {
        Method::Vq => z,
        Method::Dl => {
            let alpha = codebook.subspaces[0]
                .codes
                .as_ref()
                .expect("DL codes")
                .alpha;
            let mut terms = Vec::with_capacity(alpha);
            for slot in 0..alpha {
                let mut idx = Vec::with_capacity(s_count * reps_per);
                let mut coef = Vec::with_capacity(s_count * reps_per);
                for (s, sc) in codebook.subspaces.iter().enumerate() {
                    let codes = sc.codes.as_ref().expect("DL codes");
                    for rep in 0..reps_per {
                        let (a, c) = codes.slots(rep).nth(slot).expect("alpha slots");
                        idx.push((s * atoms_per + a) as i64);
                        coef.push(c);
                    }
                }
                let g = b.gather(&format!("term{slot}_atoms"), &z, &idx)?;
                let c = b.float_init(
                    &format!("term{slot}_coefficients"),
                    &[1, s_count * reps_per, 1, 1],
                    &coef,
                )?;
                terms.push(b.node("Mul", &format!("term{slot}"), vec![g, c], vec![])?);
            }
            if terms.len() == 1 {
                terms.pop().expect("one term")
            } else {
                b.node("Sum", "representatives", terms, vec![])?
            }
        }
    };

    // 3. Zero padding as the Conv pads its input.
    let padded = if pads.iter().any(|&(a, e)| a > 0 || e > 0) {
        b.pad(
            "padded",
            &r,
            [
                pads[0].0 as i64,
                pads[1].0 as i64,
                pads[0].1 as i64,
                pads[1].1 as i64,
            ],
        )?
    } else {
        r
    };

    // 4. Per kernel position: shift (strided slice), look-up by Γ, accumulate.
    let (st, dil) = (&attrs.strides, &attrs.dilations);
    let steps_in_slice = opset >= 10;
    let mut acc: Option<String> = None;
    for u in 0..kh {
        for v in 0..kw {
            let tag = format!("k{u}_{v}");
            let starts = [(u * dil[0]) as i64, (v * dil[1]) as i64];
            let strided = st.iter().any(|&s| s != 1);
            let ends = [
                starts[0] + ((out_hw[0] - 1) * st[0]) as i64 + 1,
                starts[1] + ((out_hw[1] - 1) * st[1]) as i64 + 1,
            ];
            let mut shifted = if strided && steps_in_slice {
                b.slice(
                    &format!("{tag}_shift"),
                    &padded,
                    &[2, 3],
                    &starts,
                    &ends,
                    &[st[0] as i64, st[1] as i64],
                )?
            } else {
                b.slice(
                    &format!("{tag}_shift"),
                    &padded,
                    &[2, 3],
                    &starts,
                    &ends,
                    &[1, 1],
                )?
            };
            if strided && !steps_in_slice {
                // Before opset 10 Slice has no steps: a 1×1 MaxPool with the stride subsamples exactly.
                shifted = b.node(
                    "MaxPool",
                    &format!("{tag}_stride"),
                    vec![shifted],
                    vec![
                        attr_ints("kernel_shape", &[1, 1]),
                        attr_ints("strides", &[st[0] as i64, st[1] as i64]),
                    ],
                )?;
            }
            let mut idx = Vec::with_capacity(s_count * m);
            for (s, sc) in codebook.subspaces.iter().enumerate() {
                for k in 0..m {
                    let rep =
                        sc.assignment[crate::codebook::subspace::column(k, u, v, kh, kw)] as usize;
                    idx.push((s * reps_per + rep) as i64);
                }
            }
            let looked = b.gather(&format!("{tag}_lookup"), &shifted, &idx)?;
            acc = Some(match acc {
                None => looked,
                Some(prev) => b.node("Add", &format!("{tag}_sum"), vec![prev, looked], vec![])?,
            });
        }
    }
    let acc = acc.expect("at least one kernel position");

    // 5. Sum over subspaces, then the bias.
    let summed = if s_count == 1 {
        acc
    } else {
        let parts: Vec<String> = (0..s_count)
            .map(|s| {
                b.slice(
                    &format!("subspace{s}"),
                    &acc,
                    &[1],
                    &[(s * m) as i64],
                    &[((s + 1) * m) as i64],
                    &[1],
                )
            })
            .collect::<Result<_>>()?;
        b.node("Sum", "subspace_sum", parts, vec![])?
    };
    // The original bias (if any) plus calibration's shift (if any).
    let mut bias: Option<Vec<f32>> = match &layer.bias {
        Some(name) => {
            let bias_t = model.initializer(name).context("bias initializer")?;
            let values = model
                .tensor_f32(bias_t)
                .with_context(|| format!("{}: bias `{name}`", ctx()))?;
            ensure!(
                values.len() == m,
                "{}: bias `{name}` has {} values, expected {m}",
                ctx(),
                values.len()
            );
            Some(values.iter().copied().collect())
        }
        None => None,
    };
    if let Some(shift) = &codebook.bias_shift {
        ensure!(
            shift.len() == m,
            "{}: the codebook's bias shift has {} values, expected {m}",
            ctx(),
            shift.len()
        );
        let values = bias.get_or_insert_with(|| vec![0.0; m]);
        for (v, s) in values.iter_mut().zip(shift) {
            *v += s;
        }
    }
    let final_name = match bias {
        Some(values) => {
            let bias4 = b.float_init("bias", &[1, m, 1, 1], &values)?;
            b.node("Add", "output", vec![summed, bias4], vec![])?
        }
        None => summed,
    };
    // The last node writes the Conv's own output name, so consumers are untouched.
    let last = b.nodes.last_mut().expect("nodes were emitted");
    ensure!(
        last.output[0] == final_name,
        "internal: last node is not the output"
    );
    last.output[0] = layer.output.clone();
    let _ = n;

    let mut released = vec![layer.weight.clone()];
    released.extend(layer.bias.iter().cloned());
    Ok(LayerPatch {
        node_index: layer.node_index,
        layer: layer.name.clone(),
        nodes: b.nodes,
        initializers: b.inits,
        released,
        metadata: (format!("onnx-dlq/{}", layer.name), settings.to_string()),
    })
}

fn value_info_for(t: &TensorProto) -> ValueInfoProto {
    ValueInfoProto {
        name: t.name.clone(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: t.data_type,
                shape: Some(TensorShapeProto {
                    dim: t
                        .dims
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
                            denotation: None,
                        })
                        .collect(),
                }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// Applies every layer patch: new nodes take the place of their Conv (so the graph stays
/// topologically sorted), released initializers nothing else uses are removed, and the model's
/// metadata records the settings. Nothing else in the model changes.
pub fn apply(model: &mut OnnxModel, patch: GraphPatch) -> Result<()> {
    let list_initializers_as_inputs = model.proto.ir_version.unwrap_or(0) < 4;
    let mut by_index: std::collections::BTreeMap<usize, LayerPatch> =
        std::collections::BTreeMap::new();
    for lp in patch.layers {
        if by_index.insert(lp.node_index, lp).is_some() {
            bail!("a layer is patched twice");
        }
    }
    let mut metadata = Vec::new();
    let mut released: Vec<String> = Vec::new();
    let graph = model.graph_mut();
    let old_nodes = std::mem::take(&mut graph.node);
    for (i, node) in old_nodes.into_iter().enumerate() {
        match by_index.remove(&i) {
            Some(lp) => {
                ensure!(
                    node.op_type.as_deref() == Some("Conv"),
                    "node {i} is {:?}, not the Conv being replaced",
                    node.op_type
                );
                graph.node.extend(lp.nodes);
                if list_initializers_as_inputs {
                    graph
                        .input
                        .extend(lp.initializers.iter().map(value_info_for));
                }
                graph.initializer.extend(lp.initializers);
                released.extend(lp.released);
                metadata.push(lp.metadata);
            }
            None => graph.node.push(node),
        }
    }
    ensure!(by_index.is_empty(), "patches name nodes that do not exist");
    let used: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let outputs: HashSet<&str> = graph
        .output
        .iter()
        .filter_map(|o| o.name.as_deref())
        .collect();
    let dead: HashSet<String> = released
        .into_iter()
        .filter(|r| !used.contains(r.as_str()) && !outputs.contains(r.as_str()))
        .collect();
    graph
        .initializer
        .retain(|t| !dead.contains(tensor::tensor_name(t)));
    graph
        .input
        .retain(|v| !v.name.as_ref().is_some_and(|n| dead.contains(n)));
    graph
        .value_info
        .retain(|v| !v.name.as_ref().is_some_and(|n| dead.contains(n)));
    let entry = |k: String, v: String| StringStringEntryProto {
        key: Some(k),
        value: Some(v),
    };
    let props = &mut model.proto.metadata_props;
    props.retain(|p| p.key.as_deref() != Some("onnx-dlq/version"));
    props.push(entry(
        "onnx-dlq/version".into(),
        env!("CARGO_PKG_VERSION").into(),
    ));
    for (k, v) in metadata {
        props.retain(|p| p.key.as_deref() != Some(k.as_str()));
        props.push(entry(k, v));
    }
    Ok(())
}
