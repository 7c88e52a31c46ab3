//! Architectures resolved from their spec: every layer with its input and output shapes and
//! its tensors' offsets in the flat parameter buffer.
//!
//! Parameters of all layers live in one flat f32 buffer (and gradients and optimizer state in
//! buffers of the same layout), so one optimizer dispatch updates everything. Batch-norm
//! running statistics, which are not trained, live in a second flat "state" buffer.

pub mod presets;
pub mod spec;

use crate::error::{Error, Result};
use crate::rng;
pub use spec::{Init, LayerSpec, ModelSpec, Recipe};
use spec::{Padding, PaddingName};

/// Element-wise activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    Relu,
    Sigmoid,
    Tanh,
    /// x for x > 0, slope x otherwise (slope >= 0).
    LeakyRelu(f32),
    /// x Phi(x), Phi the standard normal CDF (torch's erf form).
    Gelu,
    /// x sigmoid(x).
    Silu,
}

impl Act {
    /// What the shaders see (0 = none): 1 relu, 2 sigmoid, 3 tanh, 4 leaky relu (with its
    /// slope passed beside), 5 gelu, 6 silu.
    pub fn code(self) -> u32 {
        match self {
            Act::Relu => 1,
            Act::Sigmoid => 2,
            Act::Tanh => 3,
            Act::LeakyRelu(_) => 4,
            Act::Gelu => 5,
            Act::Silu => 6,
        }
    }

    /// Leaky relu's slope (0 for the others).
    pub fn slope(self) -> f32 {
        match self {
            Act::LeakyRelu(s) => s,
            _ => 0.0,
        }
    }

    /// Whether the derivative is a function of the output y (relu, sigmoid, tanh, leaky relu
    /// with slope >= 0), so the backward reads the output; gelu's and silu's are not, and
    /// theirs read the input.
    pub fn grad_from_output(self) -> bool {
        !matches!(self, Act::Gelu | Act::Silu)
    }

    /// Whether a conv or dense layer's epilogue applies it (`backend::Epilogue`): the ones
    /// whose backward needs only the output and whose code needs no argument.
    pub fn fuses(self) -> bool {
        matches!(self, Act::Relu | Act::Sigmoid | Act::Tanh)
    }

    /// The model-file name.
    pub fn name(self) -> &'static str {
        match self {
            Act::Relu => "relu",
            Act::Sigmoid => "sigmoid",
            Act::Tanh => "tanh",
            Act::LeakyRelu(_) => "leaky_relu",
            Act::Gelu => "gelu",
            Act::Silu => "silu",
        }
    }
}

/// Shape of one example's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Image { c: usize, h: usize, w: usize },
    Flat(usize),
}

impl Shape {
    pub fn len(self) -> usize {
        match self {
            Shape::Image { c, h, w } => c * h * w,
            Shape::Flat(n) => n,
        }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Shape::Image { c, h, w } => write!(f, "{c}x{h}x{w}"),
            Shape::Flat(n) => write!(f, "{n}"),
        }
    }
}

/// 2-D convolution, NCHW, weight (c_out, c_in / in_groups, kh, kw), bias (c_out).
///
/// Grouped: the c_out output channels form `groups` groups of c_out / groups, and group g
/// convolves input group g % `in_groups` (input channels split into `in_groups` groups of
/// c_in / in_groups). An ordinary convolution has one group; torch's `groups = g` is
/// groups = in_groups = g. An array's first layer (`Arch::fused`), whose K members all read
/// the same input, has groups = K g and in_groups = g.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2d {
    pub groups: usize,
    pub in_groups: usize,
    pub c_in: usize,
    pub h_in: usize,
    pub w_in: usize,
    pub c_out: usize,
    pub h_out: usize,
    pub w_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub w_off: usize,
    pub b_off: Option<usize>,
}

impl Conv2d {
    /// A layer over (c_in, h, w) inputs with the output size its kernel, stride and padding
    /// give (the padded input must hold the kernel).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c_in: usize,
        (h, w): (usize, usize),
        c_out: usize,
        (kh, kw): (usize, usize),
        stride: usize,
        (pad_h, pad_w): (usize, usize),
        w_off: usize,
        b_off: Option<usize>,
    ) -> Conv2d {
        Conv2d {
            groups: 1,
            in_groups: 1,
            c_in,
            h_in: h,
            w_in: w,
            c_out,
            h_out: (h + 2 * pad_h - kh) / stride + 1,
            w_out: (w + 2 * pad_w - kw) / stride + 1,
            kh,
            kw,
            stride,
            pad_h,
            pad_w,
            w_off,
            b_off,
        }
    }

    /// The same layer with its channels in groups (see the type's comment).
    pub fn grouped(self, groups: usize, in_groups: usize) -> Conv2d {
        Conv2d { groups, in_groups, ..self }
    }

    pub fn in_len(&self) -> usize {
        self.c_in * self.h_in * self.w_in
    }
    pub fn out_len(&self) -> usize {
        self.c_out * self.h_out * self.w_out
    }
    /// Input channels one group reads.
    pub fn group_in(&self) -> usize {
        self.c_in / self.in_groups.max(1)
    }
    /// Output channels of one group.
    pub fn group_out(&self) -> usize {
        self.c_out / self.groups.max(1)
    }
    pub fn weight_len(&self) -> usize {
        self.c_out * self.group_in() * self.kh * self.kw
    }
    /// One group's convolution as an ungrouped layer over that group's channels, with its
    /// weights and biases at their offsets: what group g computes.
    pub fn group(&self, g: usize) -> Conv2d {
        let (ci, co) = (self.group_in(), self.group_out());
        Conv2d {
            groups: 1,
            in_groups: 1,
            c_in: ci,
            c_out: co,
            w_off: self.w_off + g * co * ci * self.kh * self.kw,
            b_off: self.b_off.map(|b| b + g * co),
            ..*self
        }
    }
    /// The first input channel group g reads.
    pub fn group_input(&self, g: usize) -> usize {
        (g % self.in_groups.max(1)) * self.group_in()
    }
}

/// Fully connected layer: weight (n_out, n_in / groups) as in torch, bias (n_out). Grouped
/// (an array's members after their first layer): group g maps inputs g n_in/groups.. to
/// outputs g n_out/groups.. with row block g of the weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dense {
    pub n_in: usize,
    pub n_out: usize,
    pub groups: usize,
    pub w_off: usize,
    pub b_off: Option<usize>,
}

impl Dense {
    pub fn new(n_in: usize, n_out: usize, w_off: usize, b_off: Option<usize>) -> Dense {
        Dense { n_in, n_out, groups: 1, w_off, b_off }
    }
    pub fn group_in(&self) -> usize {
        self.n_in / self.groups.max(1)
    }
    pub fn group_out(&self) -> usize {
        self.n_out / self.groups.max(1)
    }
    pub fn weight_len(&self) -> usize {
        self.n_out * self.group_in()
    }
    /// Group g as an ungrouped layer, its weights and biases at their offsets.
    pub fn group(&self, g: usize) -> Dense {
        let (ni, no) = (self.group_in(), self.group_out());
        Dense { n_in: ni, n_out: no, groups: 1, w_off: self.w_off + g * no * ni, b_off: self.b_off.map(|b| b + g * no) }
    }
}

/// Max pooling over `size x size` windows with `stride` (no padding, floor mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub c: usize,
    pub h_in: usize,
    pub w_in: usize,
    pub h_out: usize,
    pub w_out: usize,
    pub size: usize,
    pub stride: usize,
}

impl Pool {
    pub fn in_len(&self) -> usize {
        self.c * self.h_in * self.w_in
    }
    pub fn out_len(&self) -> usize {
        self.c * self.h_out * self.w_out
    }
}

/// Average pooling over `kh x kw` windows with `stride` (no padding, floor mode); global
/// average pooling is the window of the whole map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool {
    pub c: usize,
    pub h_in: usize,
    pub w_in: usize,
    pub h_out: usize,
    pub w_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
}

impl AvgPool {
    pub fn in_len(&self) -> usize {
        self.c * self.h_in * self.w_in
    }
    pub fn out_len(&self) -> usize {
        self.c * self.h_out * self.w_out
    }
    /// Whether one window covers the whole map (global average pooling).
    pub fn is_global(&self) -> bool {
        self.kh == self.h_in && self.kw == self.w_in
    }
}

/// Batch normalisation over channels (after a conv: per channel over N, H, W; after a dense
/// layer: per feature over N, with hw = 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNorm {
    pub c: usize,
    pub hw: usize,
    pub eps: f32,
    pub momentum: f32,
    pub gamma_off: usize,
    pub beta_off: usize,
    pub mean_off: usize, // in the state buffer
    pub var_off: usize,  // in the state buffer
}

/// One layer of the resolved, flattened list (`Arch::layers`). A residual block becomes its
/// body's layers, its shortcut's layers and an `Add` of the two.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Layer {
    Conv2d(Conv2d),
    Dense(Dense),
    MaxPool2d(Pool),
    AvgPool2d(AvgPool),
    Flatten,
    Dropout {
        p: f32,
    },
    Act(Act),
    BatchNorm(BatchNorm),
    /// The end of a residual block: its input (the body's output) plus boundary `other`
    /// (the shortcut's output, or the block's input for an identity shortcut).
    Add {
        other: usize,
    },
}

impl Layer {
    /// Whether it has trained parameters.
    pub fn has_params(&self) -> bool {
        matches!(self, Layer::Conv2d(_) | Layer::Dense(_) | Layer::BatchNorm(_))
    }
}

/// What a named tensor is, for loading and saving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    Weight,
    Bias,
    RunningMean,
    RunningVar,
}

/// One named tensor inside a flat buffer, named like `torch.nn.Sequential` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub layer: usize,
    pub kind: TensorKind,
}

impl TensorInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// The largest input height or width.
pub const MAX_SIDE: usize = 4096;

/// Elements in any one tensor or activation at most (2^40, far past any machine's memory),
/// so that shape arithmetic cannot overflow.
#[cfg(target_pointer_width = "64")]
const MAX_ELEMENTS: usize = 1 << 40;
/// A 32-bit target (WebAssembly) addresses at most 4 GiB: 2^30 f32.
#[cfg(not(target_pointer_width = "64"))]
const MAX_ELEMENTS: usize = 1 << 30;

/// Tensors start at multiples of 64 floats (256 bytes): aligned vector loads on every
/// backend, and a whole tensor can be bound at its offset on a GPU.
pub const TENSOR_ALIGN: usize = 64;

fn align(n: usize) -> usize {
    n.div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN
}

#[derive(Default)]
struct Table {
    tensors: Vec<TensorInfo>,
    len: usize,
}

impl Table {
    /// Adds flat layer `layer`'s tensor `{name}.{suffix}`; errs when its size (or the total)
    /// is past any machine's memory.
    fn add(
        &mut self,
        layer: usize,
        name: &str,
        suffix: &str,
        kind: TensorKind,
        shape: Vec<usize>,
    ) -> Result<usize, String> {
        let offset = self.len;
        let len = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n <= MAX_ELEMENTS);
        let total = len.and_then(|n| offset.checked_add(n)).filter(|&n| n <= MAX_ELEMENTS);
        let Some(total) = total else {
            return Err(format!("its {suffix} of shape {shape:?} is too large for any machine"));
        };
        let info = TensorInfo { name: format!("{name}.{suffix}"), shape, offset, layer, kind };
        self.len = align(total);
        self.tensors.push(info);
        Ok(offset)
    }
}

/// A resolved architecture.
///
/// The layer list is flattened: a residual block's body layers, then its shortcut's, then an
/// `Add`, so `layers` is the order the ops run in. Activations are indexed by boundary:
/// boundary 0 is the input and boundary k + 1 the output of flat layer k, which reads
/// boundary `inputs[k]` (k for a plain list; a shortcut's first layer reads its block's
/// input).
#[derive(Debug, Clone)]
pub struct Arch {
    pub spec: ModelSpec,
    /// Models trained side by side in this network (1: a model of its own; see `fused`).
    pub members: usize,
    pub layers: Vec<Layer>,
    /// The boundary each layer reads.
    pub inputs: Vec<usize>,
    /// Each layer's name in the model file's tensor names (`3`, `3.body.0`, `3.shortcut.1`);
    /// an `Add` carries its block's name.
    pub names: Vec<String>,
    /// shapes[k] is boundary k: the input (k = 0), else layer k - 1's output; the last entry
    /// is the model's output.
    pub shapes: Vec<Shape>,
    pub params: Vec<TensorInfo>,
    pub n_params: usize,
    pub state: Vec<TensorInfo>,
    pub n_state: usize,
}

/// Resolves a layer list into flat layers, shapes and tensor offsets (see `Arch`).
struct Builder<'a> {
    model: &'a str,
    /// Members (see `Arch::fused`).
    k: usize,
    layers: Vec<Layer>,
    inputs: Vec<usize>,
    names: Vec<String>,
    shapes: Vec<Shape>,
    params: Table,
    state: Table,
    /// Whether the activations have a member dimension yet: the input is shared, each
    /// member's own values start at the first conv2d or dense layer.
    split: bool,
}

impl Builder<'_> {
    fn err(&self, at: &str, msg: impl Into<String>) -> Error {
        Error::arch(self.model, format!("layer {at}: {}", msg.into()))
    }

    /// One member's share of a size (all of it while the input is still shared).
    fn per(&self, n: usize) -> usize {
        if self.split { n / self.k } else { n }
    }

    /// The layers of `list`, named `{prefix}{j}`, the first reading boundary `inp`: the
    /// boundary of the last one's output (`inp` for an empty list).
    fn list(&mut self, list: &[LayerSpec], prefix: &str, inp: usize) -> Result<usize> {
        let mut cur = inp;
        for (j, ls) in list.iter().enumerate() {
            cur = self.layer(ls, format!("{prefix}{j}"), cur)?;
        }
        Ok(cur)
    }

    fn push(&mut self, layer: Layer, name: String, inp: usize, shape: Shape) -> usize {
        self.layers.push(layer);
        self.inputs.push(inp);
        self.names.push(name);
        self.shapes.push(shape);
        self.layers.len()
    }

    /// Adds the layer `ls`, named `at`, reading boundary `inp`; returns its output boundary.
    fn layer(&mut self, ls: &LayerSpec, at: String, inp: usize) -> Result<usize> {
        let shape = self.shapes[inp];
        let k = self.k;
        let i = self.layers.len();
        let layer = match (ls, shape) {
            (LayerSpec::Residual { layers, shortcut }, _) => {
                if layers.is_empty() {
                    return Err(self.err(&at, "a residual block needs at least one layer in its body (`layers`)"));
                }
                if k > 1 && !self.split {
                    return Err(self.err(
                        &at,
                        "an array of models shares its input up to the first conv2d or dense layer, so no residual \
                         block may come before it",
                    ));
                }
                let body = self.list(layers, &format!("{at}.body."), inp)?;
                let short = self.list(shortcut, &format!("{at}.shortcut."), inp)?;
                let (b, s) = (self.shapes[body], self.shapes[short]);
                if b != s {
                    let what = if shortcut.is_empty() { "its identity shortcut passes" } else { "its shortcut gives" };
                    return Err(self.err(
                        &at,
                        format!(
                            "residual block: its body gives {b} but {what} {s}; the two must match (a shortcut of a 1x1 \
                             conv2d with the body's filters and stride matches channels and size)"
                        ),
                    ));
                }
                return Ok(self.push(Layer::Add { other: short }, at, body, b));
            }
            (&LayerSpec::Conv2d { filters, kernel, stride, padding, bias, groups }, Shape::Image { c, h, w }) => {
                let (kh, kw) = kernel.hw();
                if filters == 0 || kh == 0 || kw == 0 || stride == 0 || groups == 0 {
                    return Err(self.err(&at, "conv2d needs filters, kernel, stride and groups of at least 1"));
                }
                let cm = self.per(c);
                if !cm.is_multiple_of(groups) || !filters.is_multiple_of(groups) {
                    return Err(self.err(
                        &at,
                        format!(
                            "conv2d groups = {groups} must divide its {cm} input channels and its {filters} filters"
                        ),
                    ));
                }
                let (pad_h, pad_w) = match padding {
                    Padding::Pixels(p) => (p, p),
                    Padding::Rect([ph, pw]) => (ph, pw),
                    Padding::Named(PaddingName::Valid) => (0, 0),
                    Padding::Named(PaddingName::Same) => {
                        if stride != 1 || kh % 2 == 0 || kw % 2 == 0 {
                            return Err(self.err(&at, "padding \"same\" needs stride 1 and an odd kernel"));
                        }
                        (kh / 2, kw / 2)
                    }
                };
                if h + 2 * pad_h < kh || w + 2 * pad_w < kw {
                    return Err(self.err(&at, format!("{kh}x{kw} kernel is larger than the padded {h}x{w} input")));
                }
                let (c_out, cg) = (k.saturating_mul(filters), cm / groups);
                let w_off = self
                    .params
                    .add(i, &at, "weight", TensorKind::Weight, vec![c_out, cg, kh, kw])
                    .map_err(|e| self.err(&at, e))?;
                let b_off = match bias {
                    true => Some(
                        self.params.add(i, &at, "bias", TensorKind::Bias, vec![c_out]).map_err(|e| self.err(&at, e))?,
                    ),
                    false => None,
                };
                // Members after the first layer read their own channels; over the shared
                // input, member m's group j reads input group j (one group: an ordinary
                // convolution with K times the filters).
                let (g, ig) = match (self.split, groups) {
                    (true, g) => (k * g, k * g),
                    (false, 1) => (1, 1),
                    (false, g) => (k * g, g),
                };
                let conv = Conv2d::new(c, (h, w), c_out, (kh, kw), stride, (pad_h, pad_w), w_off, b_off);
                Layer::Conv2d(conv.grouped(g, ig))
            }
            (LayerSpec::Conv2d { .. }, Shape::Flat(_)) => {
                return Err(self.err(&at, "conv2d needs an image input, but its input is flat"));
            }
            (&LayerSpec::Dense { units, bias }, Shape::Flat(n)) => {
                if units == 0 {
                    return Err(self.err(&at, "dense needs at least 1 unit"));
                }
                let n_out = k.saturating_mul(units);
                let n_in = self.per(n);
                let w_off = self
                    .params
                    .add(i, &at, "weight", TensorKind::Weight, vec![n_out, n_in])
                    .map_err(|e| self.err(&at, e))?;
                let b_off = match bias {
                    true => Some(
                        self.params.add(i, &at, "bias", TensorKind::Bias, vec![n_out]).map_err(|e| self.err(&at, e))?,
                    ),
                    false => None,
                };
                Layer::Dense(Dense { n_in: n, n_out, groups: if self.split { k } else { 1 }, w_off, b_off })
            }
            (LayerSpec::Dense { .. }, Shape::Image { .. }) => {
                return Err(self.err(
                    &at,
                    format!(
                        "dense needs a flat input but gets an image ({shape}); add {{ type = \"flatten\" }} before it"
                    ),
                ));
            }
            (&LayerSpec::MaxPool2d { size, stride }, Shape::Image { c, h, w }) => {
                let stride = stride.unwrap_or(size);
                if size == 0 || stride == 0 || size > h || size > w {
                    return Err(
                        self.err(&at, format!("max_pool2d size {size} / stride {stride} does not fit a {h}x{w} input"))
                    );
                }
                Layer::MaxPool2d(Pool {
                    c,
                    h_in: h,
                    w_in: w,
                    h_out: (h - size) / stride + 1,
                    w_out: (w - size) / stride + 1,
                    size,
                    stride,
                })
            }
            (&LayerSpec::AvgPool2d { size, stride }, Shape::Image { c, h, w }) => {
                let stride = stride.unwrap_or(size);
                if size == 0 || stride == 0 || size > h || size > w {
                    return Err(
                        self.err(&at, format!("avg_pool2d size {size} / stride {stride} does not fit a {h}x{w} input"))
                    );
                }
                let (h_out, w_out) = ((h - size) / stride + 1, (w - size) / stride + 1);
                Layer::AvgPool2d(AvgPool { c, h_in: h, w_in: w, h_out, w_out, kh: size, kw: size, stride })
            }
            (LayerSpec::GlobalAvgPool {}, Shape::Image { c, h, w }) => {
                Layer::AvgPool2d(AvgPool { c, h_in: h, w_in: w, h_out: 1, w_out: 1, kh: h, kw: w, stride: 1 })
            }
            (
                LayerSpec::MaxPool2d { .. } | LayerSpec::AvgPool2d { .. } | LayerSpec::GlobalAvgPool {},
                Shape::Flat(_),
            ) => {
                return Err(self.err(&at, "pooling needs an image input, but its input is flat"));
            }
            (LayerSpec::Flatten {}, _) => Layer::Flatten,
            (LayerSpec::Dropout { .. } | LayerSpec::BatchNorm { .. }, _) if k > 1 && !self.split => {
                return Err(self.err(
                    &at,
                    "an array of models shares its input up to the first conv2d or dense layer, so no dropout or \
                     batch_norm may come before it",
                ));
            }
            (&LayerSpec::Dropout { p }, _) => {
                if !(0.0..1.0).contains(&p) {
                    return Err(self.err(&at, format!("dropout p must be in [0, 1), got {p}")));
                }
                Layer::Dropout { p }
            }
            (LayerSpec::Relu {}, _) => Layer::Act(Act::Relu),
            (LayerSpec::Sigmoid {}, _) => Layer::Act(Act::Sigmoid),
            (LayerSpec::Tanh {}, _) => Layer::Act(Act::Tanh),
            (&LayerSpec::LeakyRelu { slope }, _) => {
                if !(slope >= 0.0 && slope.is_finite()) {
                    return Err(self.err(&at, format!("leaky_relu slope must be >= 0 (0.01, say), got {slope}")));
                }
                Layer::Act(Act::LeakyRelu(slope))
            }
            (LayerSpec::Gelu {}, _) => Layer::Act(Act::Gelu),
            (LayerSpec::Silu {}, _) => Layer::Act(Act::Silu),
            (&LayerSpec::BatchNorm { eps, momentum }, s) => {
                if !(eps > 0.0 && (0.0..=1.0).contains(&momentum)) {
                    return Err(self.err(&at, "batch_norm needs eps > 0 and 0 <= momentum <= 1"));
                }
                let (c, hw) = match s {
                    Shape::Image { c, h, w } => (c, h * w),
                    Shape::Flat(n) => (n, 1),
                };
                let add = |t: &mut Table, suffix: &str, kind| t.add(i, &at, suffix, kind, vec![c]);
                let (gamma, beta) = (
                    add(&mut self.params, "weight", TensorKind::Weight),
                    add(&mut self.params, "bias", TensorKind::Bias),
                );
                let (mean, var) = (
                    add(&mut self.state, "running_mean", TensorKind::RunningMean),
                    add(&mut self.state, "running_var", TensorKind::RunningVar),
                );
                let ok = |r: Result<usize, String>| r.map_err(|e| Error::arch(self.model, format!("layer {at}: {e}")));
                Layer::BatchNorm(BatchNorm {
                    c,
                    hw,
                    eps,
                    momentum,
                    gamma_off: ok(gamma)?,
                    beta_off: ok(beta)?,
                    mean_off: ok(mean)?,
                    var_off: ok(var)?,
                })
            }
        };
        // Sizes far past any memory are refused here, before any arithmetic on them can
        // overflow; what fits is checked against the machine before allocating.
        let too_big = |n: Option<usize>| n.is_none_or(|n| n > MAX_ELEMENTS);
        let size = match layer {
            Layer::Conv2d(c) => {
                [c.c_out.checked_mul(c.h_out).and_then(|v| v.checked_mul(c.w_out)), Some(self.params.len)]
            }
            Layer::Dense(d) => [Some(d.n_out), Some(self.params.len)],
            _ => [Some(0), Some(0)],
        };
        if size.iter().any(|&n| too_big(n)) {
            return Err(self.err(&at, "its output or parameters are too large for any machine"));
        }
        self.split |= matches!(layer, Layer::Conv2d(_) | Layer::Dense(_));
        let out = match layer {
            Layer::Conv2d(c) => Shape::Image { c: c.c_out, h: c.h_out, w: c.w_out },
            Layer::Dense(d) => Shape::Flat(d.n_out),
            Layer::MaxPool2d(p) => Shape::Image { c: p.c, h: p.h_out, w: p.w_out },
            Layer::AvgPool2d(p) => Shape::Image { c: p.c, h: p.h_out, w: p.w_out },
            Layer::Flatten => Shape::Flat(shape.len()),
            _ => shape,
        };
        Ok(self.push(layer, at, inp, out))
    }
}

impl Arch {
    /// Infers every shape and lays out the parameters; errors say which layer is wrong.
    pub fn new(spec: ModelSpec) -> Result<Arch> {
        Self::build(spec, 1)
    }

    /// `members` copies of the model as one network, trained side by side (seeds, sweeps):
    /// every member sees the same input; the first conv2d or dense layer is one wider layer
    /// (K times the filters or units), every later one a grouped layer with a group per
    /// member, so each layer's outputs are (n, K x the model's), member-major, and batch norm,
    /// pooling, activations and residual sums work per channel as before. Each tensor holds
    /// the K members' tensors one after another (member k's at k times the model's length
    /// from its start), which is exactly the layout of torch's grouped layers.
    pub fn fused(spec: ModelSpec, members: usize) -> Result<Arch> {
        if members == 0 {
            return Err(Error::arch(&spec.name, "an array needs at least one member"));
        }
        Self::build(spec, members)
    }

    fn build(spec: ModelSpec, k: usize) -> Result<Arch> {
        let name = spec.name.clone();
        let [c, h, w] = spec.input;
        if c == 0 || h == 0 || w == 0 {
            return Err(Error::arch(&name, format!("input shape {:?} has a zero dimension", spec.input)));
        }
        if c > crate::backend::MAX_CHANNELS {
            return Err(Error::arch(
                &name,
                format!("input has {c} channels; at most {} (grayscale, RGB, RGBA)", crate::backend::MAX_CHANNELS),
            ));
        }
        if h > MAX_SIDE || w > MAX_SIDE {
            return Err(Error::arch(&name, format!("input {h}x{w} is larger than {MAX_SIDE} pixels a side")));
        }
        spec.train.normalize.validate(Some(c)).map_err(|e| Error::arch(&name, e))?;
        if spec.layers.is_empty() {
            return Err(Error::arch(&name, "the layer list is empty"));
        }
        let mut b = Builder {
            model: &name,
            k,
            layers: Vec::new(),
            inputs: Vec::new(),
            names: Vec::new(),
            shapes: vec![Shape::Image { c, h, w }],
            params: Table::default(),
            state: Table::default(),
            split: false,
        };
        let out = b.list(&spec.layers, "", 0)?;
        let shape = b.shapes[out];
        if !b.layers.iter().any(|l| matches!(l, Layer::Conv2d(_) | Layer::Dense(_))) {
            return Err(Error::arch(&name, "the layer list needs at least one conv2d or dense layer"));
        }
        match shape {
            Shape::Flat(n) if n / k >= 2 => {}
            _ => {
                return Err(Error::arch(
                    &name,
                    format!("the last layer must give a flat vector of at least 2 class scores, got {shape}"),
                ));
            }
        }
        let Builder { layers, inputs, names, shapes, params, state, .. } = b;
        Ok(Arch {
            members: k,
            layers,
            inputs,
            names,
            shapes,
            params: params.tensors,
            n_params: params.len,
            state: state.tensors,
            n_state: state.len,
            spec,
        })
    }

    /// Where boundary `k` lies, for messages: "the input" or "after layer 3.body.1".
    pub fn boundary_name(&self, k: usize) -> String {
        match k.checked_sub(1).and_then(|i| self.names.get(i)) {
            Some(name) => format!("after layer {name}"),
            None => "of the input".into(),
        }
    }

    /// The shape layer `i` reads.
    pub fn input_shape(&self, i: usize) -> Shape {
        self.shapes[self.inputs[i]]
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn recipe(&self) -> &Recipe {
        &self.spec.train
    }

    /// Classes of one member's output (the output row holds every member's scores).
    pub fn classes(&self) -> usize {
        self.output().len() / self.members
    }

    pub fn input(&self) -> Shape {
        self.shapes[0]
    }

    pub fn output(&self) -> Shape {
        self.shapes[self.shapes.len() - 1]
    }

    /// Number of trainable scalars (without alignment padding).
    pub fn param_count(&self) -> usize {
        self.params.iter().map(|t| t.len()).sum()
    }

    /// Fresh parameters and state (flat), drawn from the run's seed.
    pub fn init(&self, init: Init, seed: u64) -> (Vec<f32>, Vec<f32>) {
        debug_assert_eq!(self.members, 1, "an array's members are initialised one by one (network::Members)");
        let mut p = vec![0f32; self.n_params];
        let mut s = vec![0f32; self.n_state];
        let mut r = rng::stream(seed, rng::STREAM_INIT, 0);
        for layer in &self.layers {
            // (weight offset, bias offset, weight length, bias length, fan in, fan out)
            let (w_off, b_off, w_len, b_len, fan_in, fan_out) = match *layer {
                Layer::Conv2d(c) => {
                    let k = c.kh * c.kw;
                    // As torch: a filter's fan-in is the channels of its own group.
                    let fan_in = if init == Init::SeedB { c.group_in() * c.h_in * c.w_in } else { c.group_in() * k };
                    (c.w_off, c.b_off, c.weight_len(), c.c_out, fan_in, c.c_out * k)
                }
                Layer::Dense(d) => (d.w_off, d.b_off, d.weight_len(), d.n_out, d.group_in(), d.n_out),
                Layer::BatchNorm(bn) => {
                    p[bn.gamma_off..bn.gamma_off + bn.c].fill(1.0);
                    s[bn.var_off..bn.var_off + bn.c].fill(1.0);
                    continue;
                }
                _ => continue,
            };
            let w = &mut p[w_off..w_off + w_len];
            // Seed B's init is He (with its own fan-in, above) for convolutions and uniform for
            // dense layers.
            match (init, layer) {
                (Init::He, _) | (Init::SeedB, Layer::Conv2d(_)) => {
                    let std = (2.0 / fan_in as f64).sqrt();
                    w.iter_mut().for_each(|x| *x = (rng::normal(&mut r) * std) as f32);
                }
                (Init::Xavier, _) => {
                    let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
                    w.iter_mut().for_each(|x| *x = ((2.0 * rng::unit_f64(&mut r) - 1.0) * a) as f32);
                }
                (Init::Uniform | Init::SeedB, _) => {
                    w.iter_mut().for_each(|x| *x = (rng::unit_f64(&mut r) - 0.5) as f32);
                    if let Some(b) = b_off {
                        p[b..b + b_len].iter_mut().for_each(|x| *x = (rng::unit_f64(&mut r) - 0.5) as f32);
                    }
                }
            }
        }
        (p, s)
    }

    /// A table of layers, output shapes and parameter counts, printed before training. A
    /// residual block is a line of its own (its output, its layers' parameters together),
    /// with its body's and shortcut's layers indented under it.
    pub fn summary(&self) -> String {
        let params_under = |prefix: &str| -> usize {
            let dotted = format!("{prefix}.");
            self.params.iter().filter(|t| t.name.starts_with(&dotted)).map(|t| t.len()).sum()
        };
        // (display name, what, output shape, parameters) per line.
        let mut rows: Vec<(String, String, Shape, usize)> = Vec::new();
        let mut open: Vec<String> = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let name = &self.names[i];
            // The blocks this layer lies in, outermost first ("3", "3.body.2" for 3.body.2.body.0).
            let parts: Vec<&str> = name.split('.').collect();
            let blocks: Vec<String> = (2..parts.len()).step_by(2).map(|j| parts[..j - 1].join(".")).collect();
            while open.last().is_some_and(|b| !blocks.contains(b)) {
                open.pop();
            }
            for block in blocks.iter().skip(open.len()) {
                let end = self.names.iter().rposition(|n| n == block).unwrap_or(i);
                let shortcut = format!("{block}.shortcut.");
                let kind = if self.names.iter().any(|n| n.starts_with(&shortcut)) { "" } else { ", identity shortcut" };
                let relative = open.last().map_or(block.as_str(), |parent| &block[parent.len() + 1..]);
                let shown = format!("{}{relative}", "  ".repeat(open.len()));
                rows.push((shown, format!("residual{kind}"), self.shapes[end + 1], params_under(block)));
                open.push(block.clone());
            }
            if matches!(layer, Layer::Add { .. }) {
                continue;
            }
            let n: usize = self.params.iter().filter(|t| t.layer == i).map(|t| t.len()).sum();
            let what = match layer {
                Layer::Conv2d(c) if c.groups > 1 => format!(
                    "conv2d {}x{} /{} pad {}, {} -> {} in {} groups",
                    c.kh, c.kw, c.stride, c.pad_h, c.c_in, c.c_out, c.groups
                ),
                Layer::Conv2d(c) => {
                    format!("conv2d {}x{} /{} pad {}, {} -> {}", c.kh, c.kw, c.stride, c.pad_h, c.c_in, c.c_out)
                }
                Layer::Dense(d) => format!("dense {} -> {}", d.n_in, d.n_out),
                Layer::MaxPool2d(p) => format!("max_pool2d {}x{} /{}", p.size, p.size, p.stride),
                Layer::AvgPool2d(p) if p.is_global() => "global_avg_pool".into(),
                Layer::AvgPool2d(p) => format!("avg_pool2d {}x{} /{}", p.kh, p.kw, p.stride),
                Layer::Flatten => "flatten".into(),
                Layer::Dropout { p } => format!("dropout {p}"),
                Layer::Act(Act::LeakyRelu(s)) => format!("leaky_relu {s}"),
                Layer::Act(a) => a.name().into(),
                Layer::BatchNorm(_) => "batch_norm".into(),
                Layer::Add { .. } => unreachable!("skipped above"),
            };
            // Inside a block, the name relative to the innermost one (body.0, shortcut.1).
            let shown = match open.last() {
                Some(b) => format!("{}{}", "  ".repeat(open.len()), &name[b.len() + 1..]),
                None => name.clone(),
            };
            rows.push((shown, what, self.shapes[i + 1], n));
        }
        let nested = self.names.iter().any(|n| n.contains('.'));
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(2).max(2);
        let mut out = String::new();
        for (shown, what, shape, n) in rows {
            let name = if nested { format!("{shown:<width$}") } else { format!("{shown:>width$}") };
            out.push_str(&format!("  {name}  {what:<32} -> {:<10} {n:>9}\n", shape.to_string()));
        }
        out.push_str(&format!("  {}  {} parameters\n", " ".repeat(width), self.param_count()));
        out
    }
}
