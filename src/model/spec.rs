//! The model file format (`models/*.toml`): an architecture (a layer list, as data) and a
//! training recipe. Presets are these same files embedded in the binary.
//!
//! ```toml
//! name = "cnn4"
//! input = [1, 28, 28]
//! layers = [
//!   { type = "conv2d", filters = 16, kernel = 5, padding = 2 },
//!   { type = "relu" },
//!   ...
//! ]
//! [train]
//! epochs = 150
//! batch = 16
//! optimizer = { type = "adam", lr = 0.001 }
//! ```

use serde::{Deserialize, Serialize};

use crate::data::augment::Augment;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Input shape (channels, height, width); MNIST is [1, 28, 28].
    #[serde(default = "default_input")]
    pub input: [usize; 3],
    pub layers: Vec<LayerSpec>,
    #[serde(default)]
    pub train: Recipe,
}

fn default_input() -> [usize; 3] {
    [1, 28, 28]
}

/// One entry of the layer list (the variants without settings are written `Relu {}` so that
/// a stray setting, `{ type = "relu", slope = 0.1 }`, is refused as an unknown field rather
/// than ignored). Each entry, parameterless ones included, takes the next index
/// of a `torch.nn.Sequential`, which names its tensors (`{index}.weight`). A residual block's
/// layers are named inside it: `{index}.body.{j}.weight`, `{index}.shortcut.{j}.weight`
/// (nested blocks the same way), as a torch module with `body` and `shortcut`
/// `nn.Sequential`s names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    Conv2d {
        filters: usize,
        kernel: Size2,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: Padding,
        #[serde(default = "yes")]
        bias: bool,
        /// Channel groups: the input channels and the filters split into this many groups,
        /// each group of filters seeing only its own group of input channels (torch's
        /// `groups`; 1: an ordinary convolution, = input channels: depthwise).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        groups: usize,
    },
    Dense {
        units: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    #[serde(alias = "maxpool")]
    MaxPool2d {
        #[serde(default = "two")]
        size: usize,
        #[serde(default)]
        stride: Option<usize>,
    },
    /// Average pooling over `size x size` windows with `stride` (default: the size), no
    /// padding, floor mode (torch's `nn.AvgPool2d(size, stride)`).
    #[serde(alias = "avgpool")]
    AvgPool2d {
        #[serde(default = "two")]
        size: usize,
        #[serde(default)]
        stride: Option<usize>,
    },
    /// The mean of each channel over its whole map: (C, H, W) -> (C, 1, 1), as torch's
    /// `nn.AdaptiveAvgPool2d(1)` (a `flatten` after it gives C values).
    GlobalAvgPool {},
    Flatten {},
    Dropout {
        p: f32,
    },
    Relu {},
    Sigmoid {},
    Tanh {},
    /// x for x > 0, slope x otherwise (torch's `nn.LeakyReLU(slope)`).
    LeakyRelu {
        #[serde(default = "leaky_slope")]
        slope: f32,
    },
    /// x Phi(x), Phi the standard normal CDF (torch's `nn.GELU()`, its default erf form).
    Gelu {},
    /// x sigmoid(x) (torch's `nn.SiLU()`, also called swish).
    Silu {},
    /// A residual block: output = body(x) + shortcut(x), the shortcut the identity when
    /// absent. The two branches must give the same shape. Any layer may be in either,
    /// residual blocks included.
    Residual {
        layers: Vec<LayerSpec>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        shortcut: Vec<LayerSpec>,
    },
    BatchNorm {
        #[serde(default = "bn_eps")]
        eps: f32,
        #[serde(default = "bn_momentum")]
        momentum: f32,
    },
}

/// Every layer of `list` in the order `model::Arch` flattens them: a residual block's body,
/// then its shortcut, then the block itself (which stands for its `Add`).
pub fn flat(list: &[LayerSpec]) -> Vec<&LayerSpec> {
    let mut out = Vec::new();
    for l in list {
        if let LayerSpec::Residual { layers, shortcut } = l {
            out.extend(flat(layers));
            out.extend(flat(shortcut));
        }
        out.push(l);
    }
    out
}

/// Calls `f` on every layer of `list`, those inside residual blocks included.
pub fn for_each_mut(list: &mut [LayerSpec], f: &mut impl FnMut(&mut LayerSpec)) {
    for l in list {
        if let LayerSpec::Residual { layers, shortcut } = l {
            for_each_mut(layers, f);
            for_each_mut(shortcut, f);
        }
        f(l);
    }
}

fn one() -> usize {
    1
}
fn is_one(v: &usize) -> bool {
    *v == 1
}
fn two() -> usize {
    2
}
fn yes() -> bool {
    true
}
fn leaky_slope() -> f32 {
    0.01
}
fn bn_eps() -> f32 {
    1e-5
}
fn bn_momentum() -> f32 {
    0.1
}

/// A kernel size: `5` or `[5, 3]` (height, width).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size2 {
    Square(usize),
    Rect([usize; 2]),
}

impl Size2 {
    pub fn hw(self) -> (usize, usize) {
        match self {
            Size2::Square(k) => (k, k),
            Size2::Rect([h, w]) => (h, w),
        }
    }
}

/// Zero padding: a number of pixels (`2`, or `[1, 2]` for height, width), `"valid"` (none) or
/// `"same"` (output as large as the input; stride 1 and odd kernels only).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Padding {
    Pixels(usize),
    Rect([usize; 2]),
    Named(PaddingName),
}

impl Default for Padding {
    fn default() -> Self {
        Padding::Pixels(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaddingName {
    Valid,
    Same,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Softmax + cross-entropy, fused (the final layer's outputs are logits).
    #[default]
    CrossEntropy,
    /// Mean squared error against one-hot targets (seed B's first models).
    Mse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// He (Kaiming) normal, std sqrt(2 / fan_in), zero bias.
    #[default]
    He,
    /// Xavier (Glorot) uniform, limit sqrt(6 / (fan_in + fan_out)), zero bias.
    Xavier,
    /// Uniform in [-0.5, 0.5) for weights and biases (seed B's models 1-7).
    Uniform,
    /// Seed B's CNNs (models 9-12) as its code does it: convolutions He normal with the fan-in
    /// taken as the input's channels x height x width (not x kernel area) and zero bias;
    /// dense layers uniform in [-0.5, 0.5) for weights and biases (its FC default).
    SeedB,
}

/// Which step count Adam's bias corrections 1 - beta^t use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BiasCorrection {
    /// t = optimizer steps so far (the paper, PyTorch).
    #[default]
    Step,
    /// t = the 1-based epoch number, the same for every step of an epoch (seed B's code).
    /// The moments still update every step, so after the first steps of a run the update is
    /// smaller than the paper's by sqrt(1 - beta2^e) / (1 - beta1^e): 0.32 in epoch 1, 0.15
    /// to 0.21 over epochs 5-45, with beta 0.9 / 0.999.
    Epoch,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    Adam {
        lr: f32,
        #[serde(default = "beta1")]
        beta1: f32,
        #[serde(default = "beta2")]
        beta2: f32,
        #[serde(default = "adam_eps")]
        eps: f32,
        /// Decoupled weight decay (AdamW); 0 = plain Adam.
        #[serde(default)]
        weight_decay: f32,
        #[serde(default)]
        bias_correction: BiasCorrection,
    },
    /// torch.optim.SGD: with momentum, b <- momentum b + g and a step of lr b (or, with
    /// `nesterov`, of lr (g + momentum b)); `weight_decay` adds weight_decay x p to every
    /// gradient first (coupled, L2, as torch's SGD does it).
    Sgd {
        lr: f32,
        #[serde(default)]
        momentum: f32,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        nesterov: bool,
        #[serde(default, skip_serializing_if = "is_zero")]
        weight_decay: f32,
    },
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

fn beta1() -> f32 {
    0.9
}
fn beta2() -> f32 {
    0.999
}
fn adam_eps() -> f32 {
    1e-8
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::Adam {
            lr: 0.001,
            beta1: beta1(),
            beta2: beta2(),
            eps: adam_eps(),
            weight_decay: 0.0,
            bias_correction: BiasCorrection::Step,
        }
    }
}

impl Optimizer {
    pub fn lr(&self) -> f32 {
        match *self {
            Optimizer::Adam { lr, .. } | Optimizer::Sgd { lr, .. } => lr,
        }
    }

    pub fn set_lr(&mut self, new: f32) {
        match self {
            Optimizer::Adam { lr, .. } | Optimizer::Sgd { lr, .. } => *lr = new,
        }
    }

    /// Adam's decoupled or SGD's coupled weight decay.
    pub fn weight_decay(&self) -> f32 {
        match *self {
            Optimizer::Adam { weight_decay, .. } | Optimizer::Sgd { weight_decay, .. } => weight_decay,
        }
    }

    /// SGD's momentum (0 for Adam, whose betas are not per-member values).
    pub fn momentum(&self) -> f32 {
        match *self {
            Optimizer::Sgd { momentum, .. } => momentum,
            Optimizer::Adam { .. } => 0.0,
        }
    }
}

/// Learning-rate schedule, applied at the start of each epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    #[default]
    Constant,
    /// Multiply by `factor` every `every` epochs.
    Step {
        every: usize,
        #[serde(default = "half")]
        factor: f32,
    },
    /// Seed B's "tunable" schedule: for epochs 1..warmup, lr += lr / epoch (0.001 becomes
    /// 0.002, 0.003, ...); then halve at every multiple of `halve_every` after the warm-up up
    /// to epoch `halve_until`; after that, halve every `late_halve_every` epochs (if set).
    Tunable {
        #[serde(default = "five")]
        warmup: usize,
        #[serde(default)]
        halve_every: Option<usize>,
        #[serde(default)]
        halve_until: Option<usize>,
        #[serde(default)]
        late_halve_every: Option<usize>,
    },
    /// Cosine annealing from the base rate to `min_lr` over the run, after an optional
    /// linear warm-up.
    Cosine {
        #[serde(default)]
        min_lr: f32,
        #[serde(default)]
        warmup: usize,
    },
    /// One cycle, step by step rather than epoch by epoch (for runs of an epoch or two): a
    /// linear rise from `start` x base to the base rate over the first `warmup` share of all
    /// steps, then a linear fall to `final_lr`.
    OneCycle {
        #[serde(default = "one_cycle_warmup")]
        warmup: f32,
        #[serde(default = "one_cycle_start")]
        start: f32,
        #[serde(default)]
        final_lr: f32,
    },
}

fn one_cycle_warmup() -> f32 {
    0.2
}
fn one_cycle_start() -> f32 {
    0.1
}

fn half() -> f32 {
    0.5
}
fn five() -> usize {
    5
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Improvement needed, relative to the best value so far (0.005 = 0.5%).
    #[serde(default)]
    pub min_delta: f32,
    /// Restore the best epoch's weights at the end.
    #[serde(default = "yes")]
    pub restore_best: bool,
    #[serde(default)]
    pub monitor: Monitor,
}

/// What early stopping watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    /// The epoch's mean training loss (seed B).
    #[default]
    TrainLoss,
    /// Loss on the validation split (needs `validation > 0`).
    ValLoss,
}

/// Input normalisation: inputs are `(pixel/255 - mean[c]) / std[c]` per channel c.
///
/// `normalize = { mean = 0.1307, std = 0.3081 }` (one value for every channel), `{ mean =
/// [0.49, 0.48, 0.45], std = [0.25, 0.24, 0.26] }` (one per channel), or `"auto"`: the mean
/// and standard deviation of each channel over the training set, computed when training
/// starts and written into the saved model file as values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Normalize {
    Auto(AutoTag),
    Values { mean: PerChannel, std: PerChannel },
}

/// The word `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoTag {
    Auto,
}

/// One number for every channel, or a list with one per channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerChannel {
    All(f32),
    Each(Vec<f32>),
}

impl PerChannel {
    fn values(&self, channels: usize) -> Vec<f32> {
        match self {
            PerChannel::All(v) => vec![*v; channels],
            PerChannel::Each(v) => v.clone(),
        }
    }
}

impl Normalize {
    /// Per-channel values: one mean and one standard deviation per channel.
    pub fn values(mean: Vec<f32>, std: Vec<f32>) -> Normalize {
        Normalize::Values { mean: PerChannel::Each(mean), std: PerChannel::Each(std) }
    }

    pub fn is_auto(&self) -> bool {
        matches!(self, Normalize::Auto(_))
    }

    /// Mean and standard deviation of each of `channels` input channels (inputs are
    /// `(pixel/255 - mean[c]) / std[c]`); `"auto"` not yet resolved reads as plain pixel/255.
    pub fn per_channel(&self, channels: usize) -> (Vec<f32>, Vec<f32>) {
        match self {
            Normalize::Auto(_) => (vec![0.0; channels], vec![1.0; channels]),
            Normalize::Values { mean, std } => (mean.values(channels), std.values(channels)),
        }
    }

    /// Checks the values, and their count against the input's channels when given.
    pub fn validate(&self, channels: Option<usize>) -> Result<(), String> {
        let Normalize::Values { mean, std } = self else { return Ok(()) };
        let mut count = channels;
        for (what, v) in [("mean", mean), ("std", std)] {
            let PerChannel::Each(list) = v else { continue };
            let channels = *count.get_or_insert(list.len());
            if list.len() != channels || list.is_empty() {
                return Err(format!(
                    "normalize {what} has {} value(s), expected {channels} (one per input channel) or a single number",
                    list.len()
                ));
            }
        }
        let (mean, std) = self.per_channel(count.unwrap_or(1));
        if !(mean.iter().all(|m| m.is_finite()) && std.iter().all(|s| *s > 0.0 && s.is_finite())) {
            return Err("normalize needs finite means and standard deviations > 0".into());
        }
        Ok(())
    }
}

impl Default for Normalize {
    /// Plain pixel/255, as both seeds and our model files use.
    fn default() -> Self {
        Normalize::Values { mean: PerChannel::All(0.0), std: PerChannel::All(1.0) }
    }
}

/// How to train a model: everything the scheduler needs besides the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    #[serde(default = "ten")]
    pub epochs: usize,
    #[serde(default = "sixteen")]
    pub batch: usize,
    #[serde(default)]
    pub loss: Loss,
    /// Label smoothing of the cross-entropy, as torch's `CrossEntropyLoss(label_smoothing)`:
    /// the target is (1 - s) one-hot + s / classes, so the training loss is (1 - s) (-log
    /// p[label]) + s x the mean over classes of -log p. Evaluation reports the plain
    /// cross-entropy.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f32,
    #[serde(default)]
    pub init: Init,
    #[serde(default)]
    pub optimizer: Optimizer,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Keep an exponential moving average of the weights and batch-norm statistics with this
    /// decay per step (0.999, say), and evaluate and save the average instead of the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<f32>,
    /// Fraction of the training set held out for validation (the last examples).
    #[serde(default)]
    pub validation: f32,
    #[serde(default)]
    pub normalize: Normalize,
}

fn ten() -> usize {
    10
}
fn sixteen() -> usize {
    16
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            epochs: ten(),
            batch: sixteen(),
            loss: Loss::default(),
            label_smoothing: 0.0,
            init: Init::default(),
            optimizer: Optimizer::default(),
            schedule: Schedule::default(),
            augment: None,
            early_stopping: None,
            ema: None,
            validation: 0.0,
            normalize: Normalize::default(),
        }
    }
}

impl Recipe {
    /// Checks the settings a user can get wrong, with a message that says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch == 0 {
            return Err("batch size must be at least 1".into());
        }
        if self.epochs == 0 {
            return Err("epochs must be at least 1".into());
        }
        let lr = self.optimizer.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return Err(format!("learning rate must be a positive number, got {lr}"));
        }
        match self.optimizer {
            Optimizer::Adam { beta1, beta2, eps, weight_decay, .. } => {
                if !((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2) && eps > 0.0 && weight_decay >= 0.0) {
                    return Err("adam needs 0 <= beta1, beta2 < 1, eps > 0 and weight_decay >= 0".into());
                }
            }
            Optimizer::Sgd { momentum, nesterov, weight_decay, .. } => {
                if !(0.0..1.0).contains(&momentum) {
                    return Err(format!("sgd momentum must be in [0, 1), got {momentum}"));
                }
                if nesterov && momentum <= 0.0 {
                    return Err("sgd nesterov needs a momentum > 0 (0.9, say)".into());
                }
                if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
                    return Err(format!("sgd weight_decay must be >= 0, got {weight_decay}"));
                }
            }
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(format!("label_smoothing must be in [0, 1) (0.1, say), got {}", self.label_smoothing));
        }
        if self.label_smoothing > 0.0 && self.loss != Loss::CrossEntropy {
            return Err("label_smoothing applies to the cross_entropy loss only".into());
        }
        match self.schedule {
            Schedule::Step { every, factor } if every == 0 || !(factor > 0.0 && factor.is_finite()) => {
                return Err("step schedule needs every >= 1 and factor > 0".into());
            }
            Schedule::Tunable { halve_every: Some(0), .. } | Schedule::Tunable { late_halve_every: Some(0), .. } => {
                return Err("tunable schedule: halving intervals must be at least 1".into());
            }
            Schedule::Cosine { min_lr, .. } if !(min_lr >= 0.0 && min_lr.is_finite()) => {
                return Err("cosine schedule needs min_lr >= 0".into());
            }
            Schedule::OneCycle { warmup, start, final_lr }
                if !((0.0..1.0).contains(&warmup)
                    && start > 0.0
                    && start <= 1.0
                    && final_lr >= 0.0
                    && final_lr.is_finite()) =>
            {
                return Err("one_cycle schedule needs 0 <= warmup < 1, 0 < start <= 1 and final_lr >= 0".into());
            }
            _ => {}
        }
        if let Some(a) = &self.augment {
            a.validate()?;
        }
        if let Some(es) = &self.early_stopping {
            if es.patience == 0 || !(es.min_delta >= 0.0 && es.min_delta.is_finite()) {
                return Err("early stopping needs patience >= 1 and min_delta >= 0".into());
            }
            if es.monitor == Monitor::ValLoss && self.validation <= 0.0 {
                return Err("early stopping on val_loss needs a validation split (validation = 0.1, say)".into());
            }
        }
        if let Some(d) = self.ema
            && !(d > 0.0 && d < 1.0)
        {
            return Err(format!("ema is the averaging decay per step, in (0, 1) (0.999, say); got {d}"));
        }
        if !(0.0..1.0).contains(&self.validation) {
            return Err(format!("validation must be a fraction in [0, 1), got {}", self.validation));
        }
        // The channel count is checked against the input's by `Arch::new`.
        self.normalize.validate(None)
    }
}
