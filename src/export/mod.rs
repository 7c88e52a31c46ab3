//! ONNX export (`gpu-train export`): a trained model as an ONNX graph that onnxruntime (on
//! servers, phones and, through onnxruntime-web, browsers), OpenCV's DNN module and TensorRT
//! run. The graph takes what the safetensors file takes, pixel/255, and normalises it
//! itself.
//!
//! Opset 13 (IR version 7): the newest opset that all of those runtimes have supported for
//! years, and one that has every op a gpu-train layer needs. Standard ops only, one per
//! layer (a few for gelu and silu), named after the layer (`3.max_pool2d`, `4.body.0.conv2d`);
//! initializers carry the safetensors names
//! (`0.weight`, `4.running_var`), so a reader of either file finds the other's tensors:
//!
//! | layer | ONNX |
//! |---|---|
//! | input normalisation | Sub, Div by (1, C, 1, 1) constants (none for mean 0, std 1) |
//! | conv2d | Conv, weight (c_out, c_in, kh, kw), pads (top, left, bottom, right) |
//! | dense | Gemm, transB = 1 (our weight is torch's (out, in)) |
//! | max_pool2d | MaxPool, no padding, floor (ceil_mode 0) as ours |
//! | avg_pool2d | AveragePool, no padding, floor |
//! | global_avg_pool | GlobalAveragePool |
//! | batch_norm | BatchNormalization with the running statistics; on (N, C) after a dense layer too |
//! | relu, sigmoid, tanh, leaky_relu | Relu, Sigmoid, Tanh, LeakyRelu (alpha = slope) |
//! | gelu | x * 0.5 * (1 + Erf(x / sqrt 2)): Div, Erf, Add, Mul, Mul (Gelu is opset 20) |
//! | silu | x * Sigmoid(x): Sigmoid, Mul |
//! | residual | its body's and shortcut's ops, then Add of the two (the identity: the block's input) |
//! | flatten | Flatten, axis 1 (NCHW flattens in C, H, W order, as ours); none on a flat input |
//! | dropout | nothing: inference is the identity |
//! | `--softmax` | Softmax, axis 1 |
//!
//! The protobuf messages are declared by hand with `prost`'s derive (`onnx_pb.rs`) instead
//! of coming from a crate generated from onnx.proto: generating them needs protoc and a build
//! script, or a crate that vendors the output and pins an onnx.proto with it, to write a
//! dozen messages with a few fields each, whose field numbers onnx.proto never changes.

pub mod onnx_pb;

use std::path::Path;

use prost::Message;

use crate::error::{Error, Result};
use crate::model::spec::Loss;
use crate::model::{Act, Layer, Shape, TensorKind};
use crate::modelfile::{self, Loaded};
use onnx_pb::tensor_shape_proto::{Dimension, dimension};
use onnx_pb::*;

pub const OPSET: i64 = 13;
pub const IR_VERSION: i64 = 7;
/// The name of the input's dynamic batch dimension.
pub const BATCH_DIM: &str = "N";

/// An encoded ONNX model.
#[derive(Debug, Clone)]
pub struct Exported {
    pub bytes: Vec<u8>,
    pub nodes: usize,
    /// `logits` or `probabilities`.
    pub output: &'static str,
}

/// Exports `model` and writes it to `path` atomically (a temporary name, then a rename).
pub fn write(model: &Loaded, path: &Path, softmax: bool) -> Result<Exported> {
    let e = export(model, softmax)?;
    modelfile::write_atomic(path, &e.bytes)?;
    Ok(e)
}

/// The model as an ONNX graph: input `input` (N, C, H, W) float32 pixel/255, output `logits`
/// (N, classes), or `probabilities` with `softmax`.
pub fn export(model: &Loaded, softmax: bool) -> Result<Exported> {
    let arch = &model.arch;
    let err = |reason: String| Error::Export { name: arch.name().to_string(), reason };
    if softmax && arch.recipe().loss == Loss::Mse {
        let why = "it is trained with mse against one-hot targets, so its outputs are scores, not logits; \
                   --softmax does not apply (export without it)";
        return Err(err(why.into()));
    }
    let [c, h, w] = arch.spec.input;
    let mut g = Builder { model, nodes: Vec::new(), initializers: Vec::new(), cur: "input".into() };
    g.normalize(c)?;
    // The value each boundary is in the graph (a layer without an op passes its input on).
    let mut values = vec![g.cur.clone()];
    for (i, layer) in arch.layers.iter().enumerate() {
        g.cur = values[arch.inputs[i]].clone();
        let other = match layer {
            Layer::Add { other } => values[*other].clone(),
            _ => String::new(),
        };
        g.layer(i, layer, arch.input_shape(i), other)?;
        values.push(g.cur.clone());
    }
    let output = if softmax { "probabilities" } else { "logits" };
    if softmax {
        g.op("Softmax", "softmax", vec![], vec![int("axis", 1)]);
    }
    // The last op writes the graph's output (a model has at least one conv or dense op).
    match g.nodes.last_mut() {
        Some(last) => last.output = vec![output.into()],
        None => return Err(err("the graph has no ops".into())),
    }
    let classes = arch.classes();
    let (doc, meta) = describe(model, output)?;
    let nodes = g.nodes.len();
    let graph = GraphProto {
        node: g.nodes,
        name: Some(arch.name().into()),
        initializer: g.initializers,
        doc_string: None,
        input: vec![value("input", &[None, Some(c), Some(h), Some(w)], "pixel / 255, NCHW")],
        output: vec![value(output, &[None, Some(classes)], &format!("{output}, one row of {classes} per image"))],
    };
    let proto = ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some("gpu-train".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: None,
        doc_string: Some(doc),
        graph: Some(graph),
        metadata_props: meta
            .into_iter()
            .map(|(k, v)| StringStringEntryProto { key: Some(k.into()), value: Some(v) })
            .collect(),
    };
    Ok(Exported { bytes: proto.encode_to_vec(), nodes, output })
}

/// The model's doc string and metadata: what the input and output are, class names, input
/// shape, normalisation, the recorded metrics and the model file.
fn describe(model: &Loaded, output: &str) -> Result<(String, Vec<(&'static str, String)>)> {
    let arch = &model.arch;
    let [c, h, w] = arch.spec.input;
    let k = arch.classes();
    let what = match (output, arch.recipe().loss) {
        ("probabilities", _) => "class probabilities (softmax of the logits)",
        (_, Loss::CrossEntropy) => "logits (softmax gives the class probabilities)",
        (_, Loss::Mse) => "the final layer's outputs (trained with mse against one-hot targets: scores, not logits)",
    };
    let doc = format!(
        "{name}, exported by gpu-train {version}. Input `input`: float32 (N, {c}, {h}, {w}), any batch size N, \
         pixel values / 255 in [0, 1], as in training (MNIST: white digit on black); the graph normalises them \
         itself. Output `{output}`: float32 (N, {k}), {what}; its argmax is the class, named by the metadata's \
         `classes`.",
        name = arch.name(),
        version = env!("CARGO_PKG_VERSION"),
    );
    let (mean, std) = arch.spec.train.normalize.per_channel(c);
    let json = |v: serde_json::Value| v.to_string();
    let spec = toml::to_string(&arch.spec).map_err(|e| Error::Export {
        name: arch.name().into(),
        reason: format!("cannot encode the model file: {e}"),
    })?;
    let mut meta = vec![
        ("classes", json(serde_json::json!(model.class_names()))),
        ("input_shape", json(serde_json::json!([c, h, w]))),
        (
            "normalization",
            json(serde_json::json!({ "input": "pixel / 255", "mean": mean, "std": std, "in_graph": true })),
        ),
        ("output", output.to_string()),
        ("model", spec),
    ];
    for key in ["metrics", "run"] {
        if let Some(v) = model.metadata.get(key) {
            meta.push((key, v.clone()));
        }
    }
    Ok((doc, meta))
}

/// The graph so far: ops, initializers, and the name of the current activation.
struct Builder<'a> {
    model: &'a Loaded,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    cur: String,
}

impl Builder<'_> {
    fn err(&self, reason: String) -> Error {
        Error::Export { name: self.model.arch.name().into(), reason }
    }

    /// Appends op `op_type` reading the current activation and then `inputs`, writing `name`.
    fn op(&mut self, op_type: &str, name: &str, inputs: Vec<String>, attribute: Vec<AttributeProto>) {
        let input = std::iter::once(std::mem::take(&mut self.cur)).chain(inputs).collect();
        self.nodes.push(NodeProto {
            input,
            output: vec![name.into()],
            name: Some(name.into()),
            op_type: Some(op_type.into()),
            attribute,
            ..Default::default()
        });
        self.cur = name.into();
    }

    fn constant(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(FLOAT),
            name: Some(name.into()),
            doc_string: None,
            raw_data: Some(data.iter().flat_map(|x| x.to_le_bytes()).collect()),
        });
        name.into()
    }

    /// Layer `layer`'s tensor of `kind` as an initializer under its safetensors name.
    fn tensor(&mut self, layer: usize, kind: TensorKind) -> Result<String> {
        let m = self.model;
        let (infos, flat) = match kind {
            TensorKind::Weight | TensorKind::Bias => (&m.arch.params, &m.params),
            TensorKind::RunningMean | TensorKind::RunningVar => (&m.arch.state, &m.state),
        };
        let t = infos
            .iter()
            .find(|t| t.layer == layer && t.kind == kind)
            .ok_or_else(|| self.err(format!("layer {layer} has no {kind:?} tensor")))?;
        let data = flat
            .get(t.range())
            .ok_or_else(|| self.err(format!("tensor {} lies outside the parameters given", t.name)))?;
        Ok(self.constant(&t.name, &t.shape, data))
    }

    /// (x - mean[c]) / std[c] on the (N, C, H, W) input, skipped when it changes nothing.
    fn normalize(&mut self, c: usize) -> Result<()> {
        let (mean, std) = self.model.arch.spec.train.normalize.per_channel(c);
        if mean.len() != c || std.len() != c || !std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(self.err(format!("normalisation needs {c} finite means and positive deviations")));
        }
        if mean.iter().all(|&m| m == 0.0) && std.iter().all(|&s| s == 1.0) {
            return Ok(());
        }
        let m = self.constant("normalize.mean", &[1, c, 1, 1], &mean);
        let s = self.constant("normalize.std", &[1, c, 1, 1], &std);
        self.op("Sub", "normalize.sub", vec![m], vec![]);
        self.op("Div", "normalize.div", vec![s], vec![]);
        Ok(())
    }

    /// A scalar constant (shape [1]) named `name`.
    fn scalar(&mut self, name: &str, v: f32) -> String {
        self.constant(name, &[1], &[v])
    }

    /// The ops of layer `i`, whose input (the current value) has shape `shape`; an `Add` also
    /// reads the value `other`. The match names every layer kind and input shape, so a new
    /// kind does not compile until it is exported, and a kind on an input its ONNX op cannot
    /// take is an error, not a wrong graph.
    fn layer(&mut self, i: usize, layer: &Layer, shape: Shape, other: String) -> Result<()> {
        let layer_name = self.model.arch.names[i].clone();
        let name = |kind: &str| format!("{layer_name}.{kind}");
        match (*layer, shape) {
            (Layer::Conv2d(l), Shape::Image { .. }) if l.groups != l.in_groups => {
                return Err(self.err(format!(
                    "layer {layer_name}: {} groups reading {} input groups (an array's shared first layer) has no \
                     ONNX Conv; export a member's own model file",
                    l.groups, l.in_groups
                )));
            }
            (Layer::Conv2d(l), Shape::Image { .. }) => {
                let mut inputs = vec![self.tensor(i, TensorKind::Weight)?];
                if l.b_off.is_some() {
                    inputs.push(self.tensor(i, TensorKind::Bias)?);
                }
                let mut attrs = vec![
                    ints("kernel_shape", &[l.kh, l.kw]),
                    ints("strides", &[l.stride, l.stride]),
                    ints("pads", &[l.pad_h, l.pad_w, l.pad_h, l.pad_w]),
                ];
                if l.groups > 1 {
                    attrs.push(int("group", l.groups as i64));
                }
                self.op("Conv", &name("conv2d"), inputs, attrs);
            }
            (Layer::Dense(l), Shape::Flat(_)) if l.groups > 1 => {
                return Err(self.err(format!(
                    "layer {layer_name}: a grouped dense layer (an array's) has no ONNX Gemm; export a member's own \
                     model file"
                )));
            }
            (Layer::Dense(l), Shape::Flat(_)) => {
                let mut inputs = vec![self.tensor(i, TensorKind::Weight)?];
                if l.b_off.is_some() {
                    inputs.push(self.tensor(i, TensorKind::Bias)?);
                }
                self.op("Gemm", &name("dense"), inputs, vec![int("transB", 1)]);
            }
            (Layer::MaxPool2d(l), Shape::Image { .. }) => {
                let attrs = vec![ints("kernel_shape", &[l.size, l.size]), ints("strides", &[l.stride, l.stride])];
                self.op("MaxPool", &name("max_pool2d"), vec![], attrs);
            }
            (Layer::AvgPool2d(l), Shape::Image { .. }) if l.is_global() => {
                self.op("GlobalAveragePool", &name("global_avg_pool"), vec![], vec![]);
            }
            (Layer::AvgPool2d(l), Shape::Image { .. }) => {
                let attrs = vec![ints("kernel_shape", &[l.kh, l.kw]), ints("strides", &[l.stride, l.stride])];
                self.op("AveragePool", &name("avg_pool2d"), vec![], attrs);
            }
            (Layer::Add { .. }, _) => self.op("Add", &name("add"), vec![other], vec![]),
            (Layer::BatchNorm(l), _) => {
                let inputs = vec![
                    self.tensor(i, TensorKind::Weight)?,
                    self.tensor(i, TensorKind::Bias)?,
                    self.tensor(i, TensorKind::RunningMean)?,
                    self.tensor(i, TensorKind::RunningVar)?,
                ];
                self.op("BatchNormalization", &name("batch_norm"), inputs, vec![float("epsilon", l.eps)]);
            }
            (Layer::Act(a), _) => match a {
                Act::Relu => self.op("Relu", &name("relu"), vec![], vec![]),
                Act::Sigmoid => self.op("Sigmoid", &name("sigmoid"), vec![], vec![]),
                Act::Tanh => self.op("Tanh", &name("tanh"), vec![], vec![]),
                Act::LeakyRelu(slope) => self.op("LeakyRelu", &name("leaky_relu"), vec![], vec![float("alpha", slope)]),
                Act::Gelu => {
                    // x * 0.5 * (1 + erf(x / sqrt 2)), torch's erf form.
                    let x = self.cur.clone();
                    let sqrt2 = self.scalar(&name("gelu.sqrt2"), std::f32::consts::SQRT_2);
                    let one = self.scalar(&name("gelu.one"), 1.0);
                    let half = self.scalar(&name("gelu.half"), 0.5);
                    self.op("Div", &name("gelu.div"), vec![sqrt2], vec![]);
                    self.op("Erf", &name("gelu.erf"), vec![], vec![]);
                    self.op("Add", &name("gelu.add"), vec![one], vec![]);
                    self.op("Mul", &name("gelu.mul"), vec![x], vec![]);
                    self.op("Mul", &name("gelu"), vec![half], vec![]);
                }
                Act::Silu => {
                    let x = self.cur.clone();
                    self.op("Sigmoid", &name("silu.sigmoid"), vec![], vec![]);
                    self.op("Mul", &name("silu"), vec![x], vec![]);
                }
            },
            (Layer::Flatten, Shape::Image { .. }) => self.op("Flatten", &name("flatten"), vec![], vec![int("axis", 1)]),
            (Layer::Flatten, Shape::Flat(_)) | (Layer::Dropout { .. }, _) => {}
            (Layer::Conv2d(_) | Layer::MaxPool2d(_) | Layer::AvgPool2d(_), Shape::Flat(_))
            | (Layer::Dense(_), Shape::Image { .. }) => {
                return Err(self.err(format!("layer {layer_name} ({layer:?}) cannot take a {shape} input")));
            }
        }
        Ok(())
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

/// A float32 graph input or output; `None` is the dynamic batch dimension.
fn value(name: &str, dims: &[Option<usize>], doc: &str) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(n) => dimension::Value::DimValue(*n as i64),
                None => dimension::Value::DimParam(BATCH_DIM.into()),
            }),
            denotation: None,
        })
        .collect();
    let tensor = type_proto::Tensor { elem_type: Some(FLOAT), shape: Some(TensorShapeProto { dim }) };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), denotation: None }),
        doc_string: Some(doc.into()),
    }
}
