//! Which tensors of a float graph are quantized, and which nodes then run in int8: the
//! placement ONNX Runtime's own quantizer chooses (QDQ format), so that its graph optimiser
//! fuses each DequantizeLinear → op → QuantizeLinear group into an integer kernel
//! (QLinearConv, QGemm, QLinearAdd, QLinearConcat, QLinearGlobalAveragePool, …).

use std::collections::{HashMap, HashSet};

use crate::onnx::model::OnnxModel;
use crate::proto::{GraphProto, NodeProto};

/// Operators computed on quantized inputs into a quantized output.
const COMPUTED: &[&str] = &[
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "Concat",
    "AveragePool",
    "GlobalAveragePool",
    "MaxPool",
];

/// Operators that move or select values without changing them: their output is quantized with
/// their input's parameters when the input is quantized (ONNX Runtime then drops the pair).
const MOVES: &[&str] = &["Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze"];

/// Operators that turn the last layer's output into the model's outputs. A tensor that reaches
/// the outputs only through them is the model's head: quantizing it would round the outputs
/// themselves (on SqueezeNet, 8-bit logits tie at the top on one image in twenty).
const HEAD: &[&str] = &[
    "Softmax",
    "LogSoftmax",
    "Flatten",
    "Reshape",
    "Identity",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
];

/// Int8 nodes that ONNX Runtime runs as well with a float output (QGemm writes float; a
/// pooling runs on its dequantized input): in the head, their output is left float.
const FLOAT_OUTPUT: &[&str] = &["Gemm", "GlobalAveragePool", "AveragePool", "MaxPool"];

/// Producers whose following ReLU the quantized output absorbs (see [`fold_relus`]).
const ABSORB_RELU: &[&str] = &["Conv", "Gemm", "MatMul", "Add"];

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or_default()
}

/// The tensors computed from initializers alone (weights, the compact form's rebuilt kernels),
/// which are never quantized as activations.
pub fn constants(graph: &GraphProto) -> HashSet<String> {
    let mut known: HashSet<String> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.clone())
        .collect();
    // A graph input of the same name overrides its initializer (IR 4 and later): not constant.
    let inputs: HashSet<&str> = graph
        .input
        .iter()
        .filter_map(|i| i.name.as_deref())
        .collect();
    known.retain(|n| !inputs.contains(n.as_str()));
    for n in &graph.node {
        let all_const = !n.input.is_empty()
            && n.input.iter().all(|i| i.is_empty() || known.contains(i))
            || op(n) == "Constant";
        if all_const {
            known.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
        }
    }
    known
}

/// The input positions of `n` that are activations to quantize, when `n` can run in int8:
/// every data input must be computed at run time, and a Conv's, Gemm's or MatMul's weight
/// must be a constant.
pub fn activation_inputs(n: &NodeProto, consts: &HashSet<String>) -> Option<Vec<usize>> {
    let runtime = |i: usize| {
        n.input
            .get(i)
            .is_some_and(|t| !t.is_empty() && !consts.contains(t))
    };
    let constant = |i: usize| n.input.get(i).is_some_and(|t| consts.contains(t));
    match op(n) {
        "Conv" | "Gemm" => (runtime(0) && constant(1)).then(|| vec![0]),
        "MatMul" if runtime(0) && constant(1) => Some(vec![0]),
        "MatMul" | "Add" | "Mul" => (runtime(0) && runtime(1)).then(|| vec![0, 1]),
        "Concat" => (0..n.input.len())
            .all(runtime)
            .then(|| (0..n.input.len()).collect()),
        "AveragePool" | "GlobalAveragePool" | "MaxPool" => {
            (runtime(0) && n.output.len() == 1).then(|| vec![0])
        }
        _ => None,
    }
}

/// Removes each ReLU whose input comes from a node that will run in int8 and feeds nothing
/// else: the producer writes the ReLU's output instead, and that output's quantization (its
/// range starts at 0, so its zero point is the type's minimum) clamps the negatives as the ReLU
/// did. ONNX Runtime's quantizer does the same. Returns the names of the producers' new
/// outputs.
pub fn fold_relus(model: &mut OnnxModel) -> Vec<String> {
    let graph = model.graph();
    let consts = constants(graph);
    let outputs: HashSet<&str> = graph
        .output
        .iter()
        .filter_map(|o| o.name.as_deref())
        .collect();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let mut folds = vec![]; // (producer index, relu index)
    for (r, n) in graph.node.iter().enumerate() {
        if op(n) != "Relu" || n.input.len() != 1 || n.output.len() != 1 {
            continue;
        }
        let x = n.input[0].as_str();
        let Some(&p) = producer.get(x) else { continue };
        let pn = &graph.node[p];
        let absorbs = ABSORB_RELU.contains(&op(pn))
            && pn.output.len() == 1
            && activation_inputs(pn, &consts).is_some();
        if absorbs && uses.get(x) == Some(&1) && !outputs.contains(x) {
            folds.push((p, r));
        }
    }
    let g = model.graph_mut();
    let mut folded = vec![];
    for &(p, r) in &folds {
        let out = g.node[r].output[0].clone();
        g.node[p].output[0] = out.clone();
        folded.push(out);
    }
    let removed: HashSet<usize> = folds.iter().map(|&(_, r)| r).collect();
    let mut i = 0;
    g.node.retain(|_| {
        i += 1;
        !removed.contains(&(i - 1))
    });
    folded
}

/// The quantized tensors of a graph and the nodes that run in int8.
#[derive(Debug, Clone, Default)]
pub struct QuantPlan {
    /// Each quantized tensor with the tensor whose parameters it takes (itself when its range
    /// is calibrated), in graph order.
    pub tensors: Vec<(String, String)>,
    /// Indices of the nodes whose inputs and output are quantized.
    pub nodes: Vec<usize>,
}

impl QuantPlan {
    /// The tensors whose ranges calibration measures.
    pub fn calibrated(&self) -> Vec<String> {
        self.tensors
            .iter()
            .filter(|(t, src)| t == src)
            .map(|(t, _)| t.clone())
            .collect()
    }
}

/// The tensors of the model's head: the graph's outputs, and every tensor all of whose
/// consumers are [`HEAD`] nodes writing head tensors (nodes are in topological order, so one
/// pass from the end settles each tensor after its consumers).
pub fn head(graph: &GraphProto) -> HashSet<String> {
    let mut head: HashSet<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            consumers.entry(i.as_str()).or_default().push(n);
        }
    }
    for n in graph.node.iter().rev() {
        let Some(x) = n.input.first() else { continue };
        let feeds_head =
            |c: &&NodeProto| HEAD.contains(&op(c)) && c.output.iter().all(|o| head.contains(o));
        let all_head = consumers
            .get(x.as_str())
            .is_some_and(|c| c.iter().all(feeds_head));
        if HEAD.contains(&op(n)) && all_head {
            head.insert(x.clone());
        }
    }
    head
}

/// Folds `model`'s ReLUs into their producers ([`fold_relus`]), then plans its quantized
/// tensors ([`plan`]) on the folded graph, as the rewrite reads it. Returns the folded
/// producers' outputs and the plan.
pub fn fold_and_plan(model: &mut OnnxModel) -> (Vec<String>, QuantPlan) {
    let folded = fold_relus(model);
    let planned = plan(model.graph());
    (folded, planned)
}

/// Chooses the quantized tensors of `graph`: the activation inputs and the output of every
/// node that can run in int8 (but a float-capable node's output in the model's [`head`]), and
/// the outputs of value-moving nodes fed by a quantized tensor.
pub fn plan(graph: &GraphProto) -> QuantPlan {
    let consts = constants(graph);
    let head = head(graph);
    let mut source: HashMap<String, String> = HashMap::new();
    let mut order: Vec<String> = vec![];
    let mut add = |t: &str, src: &str, order: &mut Vec<String>| {
        if !source.contains_key(t) {
            source.insert(t.to_string(), src.to_string());
            order.push(t.to_string());
        }
    };
    let mut nodes = vec![];
    let mut quantized: HashSet<String> = HashSet::new();
    for (i, n) in graph.node.iter().enumerate() {
        if COMPUTED.contains(&op(n)) {
            let Some(inputs) = activation_inputs(n, &consts) else {
                continue;
            };
            for &k in &inputs {
                add(&n.input[k], &n.input[k], &mut order);
                quantized.insert(n.input[k].clone());
            }
            nodes.push(i);
            let out = &n.output[0];
            if FLOAT_OUTPUT.contains(&op(n)) && head.contains(out) {
                continue;
            }
            // MaxPool selects among its inputs: same parameters in and out.
            let src = match op(n) {
                "MaxPool" => n.input[0].clone(),
                _ => out.clone(),
            };
            add(out, &src, &mut order);
            quantized.insert(out.clone());
        } else if MOVES.contains(&op(n))
            && n.output.len() == 1
            && n.input.first().is_some_and(|x| quantized.contains(x))
        {
            let out = &n.output[0];
            add(out, &n.input[0], &mut order);
            quantized.insert(out.clone());
        }
    }
    // Sources resolved to calibrated tensors (a move of a move takes the first's source).
    let resolve = |t: &String| {
        let mut s = t.clone();
        while let Some(next) = source.get(&s).filter(|n| **n != s) {
            s = next.clone();
        }
        s
    };
    let tensors = order.iter().map(|t| (t.clone(), resolve(t))).collect();
    QuantPlan { tensors, nodes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::build::node;
    use crate::proto::{ModelProto, TensorProto, ValueInfoProto};

    /// A graph input or output of that name, untyped.
    fn info(n: &str) -> ValueInfoProto {
        ValueInfoProto {
            name: Some(n.into()),
            ..Default::default()
        }
    }

    /// An initializer of that name, empty (the plan reads names only).
    fn init(n: &str) -> TensorProto {
        TensorProto {
            name: Some(n.into()),
            ..Default::default()
        }
    }

    /// x ─ Conv(w) ─ Relu ─ Conv(w) ─ Add(·, relu) ─ Relu ─ Flatten ─ y, and beside it an Add
    /// of a constant, whose ReLU must stay (that Add does not run in int8).
    fn model() -> OnnxModel {
        let nodes = vec![
            node("Conv", "c1", &["x", "w"], &["c1"], vec![]),
            node("Relu", "r1", &["c1"], &["r1"], vec![]),
            node("Conv", "c2", &["r1", "w"], &["c2"], vec![]),
            node("Add", "a", &["c2", "r1"], &["a"], vec![]),
            node("Relu", "r2", &["a"], &["r2"], vec![]),
            node("Flatten", "f", &["r2"], &["y"], vec![]),
            node("Add", "k", &["x", "b"], &["k"], vec![]),
            node("Relu", "r3", &["k"], &["z"], vec![]),
        ];
        OnnxModel {
            proto: ModelProto {
                ir_version: Some(8),
                graph: Some(GraphProto {
                    node: nodes,
                    input: vec![info("x")],
                    output: vec![info("y"), info("z")],
                    initializer: vec![init("w"), init("b")],
                    ..Default::default()
                }),
                ..Default::default()
            },
            path: "m.onnx".into(),
            base_dir: ".".into(),
        }
    }

    #[test]
    fn relus_fold_into_int8_producers_only() {
        let mut m = model();
        let folded = fold_relus(&mut m);
        assert_eq!(folded, vec!["r1".to_string(), "r2".to_string()]);
        let ops: Vec<&str> = m.graph().node.iter().map(op).collect();
        assert_eq!(ops, ["Conv", "Conv", "Add", "Flatten", "Add", "Relu"]);
        assert_eq!(m.graph().node[0].output, ["r1"]);
    }

    #[test]
    fn plan_quantizes_int8_nodes_inputs_and_outputs_and_moves_share_parameters() {
        let mut m = model();
        fold_relus(&mut m);
        let p = plan(m.graph());
        let pairs: Vec<(&str, &str)> = p
            .tensors
            .iter()
            .map(|(t, s)| (t.as_str(), s.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("x", "x"),
                ("r1", "r1"),
                ("c2", "c2"),
                ("r2", "r2"),
                ("y", "r2")
            ]
        );
        assert_eq!(p.nodes, [0, 1, 2]);
        assert_eq!(p.calibrated(), ["x", "r1", "c2", "r2"]);
    }

    /// The model's head stays float: a pooling whose output reaches the outputs through
    /// Softmax alone, and a Gemm whose output is the model's output, write float (their inputs
    /// stay quantized); a pooling that feeds a Gemm keeps its quantized output.
    #[test]
    fn the_head_keeps_float_outputs() {
        let nodes = vec![
            node("Conv", "c", &["x", "w"], &["c"], vec![]),
            node("GlobalAveragePool", "p", &["c"], &["p"], vec![]),
            node("Softmax", "s", &["p"], &["probs"], vec![]),
            node("GlobalAveragePool", "q", &["c"], &["q"], vec![]),
            node("Flatten", "f", &["q"], &["f"], vec![]),
            node("Gemm", "g", &["f", "v"], &["logits"], vec![]),
        ];
        let graph = GraphProto {
            node: nodes,
            input: vec![info("x")],
            output: vec![info("probs"), info("logits")],
            initializer: vec![init("w"), init("v")],
            ..Default::default()
        };
        let heads = head(&graph);
        for t in ["probs", "p", "logits"] {
            assert!(heads.contains(t), "{t}");
        }
        for t in ["c", "q", "f"] {
            assert!(!heads.contains(t), "{t}");
        }
        let p = plan(&graph);
        let quantized: Vec<&str> = p.tensors.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(quantized, ["x", "c", "q", "f"]);
        assert_eq!(p.nodes, [0, 1, 3, 5]);
    }
}
