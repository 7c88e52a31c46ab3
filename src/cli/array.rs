//! `--seeds`, `--sweep` and `--data-seed` of train and bench: the members of an array of
//! models trained side by side (`gpu_train::network::Members`), each with its own seed and
//! the swept values of its recipe.

use anyhow::{Result, bail};
use clap::Args;

use gpu_train::model::ModelSpec;
use gpu_train::model::spec::{self, LayerSpec, Loss, Optimizer};
use gpu_train::network::Member;

/// The most members one run takes (a bound on mistakes like `--seeds 1..100000000`; what
/// fits the machine is checked before allocating).
const MAX_MEMBERS: usize = 65_536;

/// The recipe values an array may vary per member, with their accepted spellings.
const KEYS: &[(&str, &[&str])] = &[
    ("lr", &["lr", "learning_rate"]),
    ("weight_decay", &["weight_decay", "wd"]),
    ("momentum", &["momentum"]),
    ("label_smoothing", &["label_smoothing", "smoothing"]),
    ("ema", &["ema"]),
    ("dropout", &["dropout"]),
];

#[derive(Args, Clone, Default)]
pub struct ArrayArgs {
    /// Train one model per seed in one pass, as one network (an array): `1..8` (1 to 8) or
    /// `1,4,9`; with --out DIR/NAME.safetensors the members are DIR/NAME-s<seed>.safetensors,
    /// with a manifest DIR/NAME.members.json
    #[arg(long, value_name = "SEEDS")]
    pub seeds: Option<String>,
    /// One model per value of a recipe setting, in the same pass: `lr=0.001,0.003`; keys lr,
    /// weight_decay (wd), momentum, label_smoothing (smoothing), ema, dropout (every dropout
    /// layer's p); several --sweep cross with each other and with the seeds
    #[arg(long, value_name = "KEY=V1,V2,...")]
    pub sweep: Vec<String>,
    /// Seed of the batch order, augmentation and validation split, which every member of an
    /// array shares [default: the (first) seed]
    #[arg(long)]
    pub data_seed: Option<u64>,
}

/// What to train: the members, the swept values each member's name carries, and whether it is
/// an array (--seeds or --sweep given) or one model.
pub struct Plan {
    pub members: Vec<Member>,
    pub tags: Vec<Vec<(String, String)>>,
    pub array: bool,
    pub data_seed: u64,
}

impl ArrayArgs {
    pub fn is_array(&self) -> bool {
        self.seeds.is_some() || !self.sweep.is_empty()
    }

    /// The members of `spec` (a model of its own with `seed` when neither --seeds nor --sweep
    /// is given), each recipe checked.
    pub fn plan(&self, spec: &ModelSpec, seed: u64) -> Result<Plan> {
        let seeds = match &self.seeds {
            Some(s) => parse_seeds(s)?,
            None => vec![seed],
        };
        let mut combos: Vec<Vec<(&'static str, String, f32)>> = vec![Vec::new()];
        let mut seen: Vec<&str> = Vec::new();
        for s in &self.sweep {
            let (key, values) = parse_sweep(s)?;
            if seen.contains(&key) {
                bail!("--sweep {key} is given twice; list all its values in one --sweep {key}=V1,V2,...");
            }
            seen.push(key);
            combos = combos
                .into_iter()
                .flat_map(|c| values.iter().map(move |(text, v)| [c.clone(), vec![(key, text.clone(), *v)]].concat()))
                .collect();
        }
        let k = combos.len().saturating_mul(seeds.len());
        if k > MAX_MEMBERS {
            bail!("--seeds and --sweep make {k} members, more than the {MAX_MEMBERS} one run takes");
        }
        let mut members = Vec::new();
        let mut tags = Vec::new();
        for combo in &combos {
            let mut member_spec = spec.clone();
            for (key, text, v) in combo {
                apply(&mut member_spec, key, text, *v)?;
            }
            if let Err(e) = member_spec.train.validate() {
                let what: Vec<String> = combo.iter().map(|(k, t, _)| format!("{k}={t}")).collect();
                bail!("--sweep {}: {e}", what.join(" "));
            }
            for &seed in &seeds {
                members.push(Member { seed, spec: member_spec.clone() });
                tags.push(combo.iter().map(|(k, t, _)| (k.to_string(), t.clone())).collect());
            }
        }
        let data_seed = self.data_seed.unwrap_or(seeds[0]);
        Ok(Plan { members, tags, array: self.is_array(), data_seed })
    }
}

/// `1..8` (inclusive) or `1,4,9`.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    let seeds: Vec<u64> = if let Some((a, b)) = s.split_once("..") {
        let parse = |t: &str| {
            t.trim().parse::<u64>().map_err(|_| anyhow::anyhow!("--seeds {s}: '{t}' is not a seed (a whole number)"))
        };
        let (a, b) = (parse(a)?, parse(b.trim_start_matches('='))?);
        if b < a {
            bail!("--seeds {s}: the range ends before it starts");
        }
        if b - a >= MAX_MEMBERS as u64 {
            bail!("--seeds {s}: {} seeds, more than the {MAX_MEMBERS} one run takes", b - a + 1);
        }
        (a..=b).collect()
    } else {
        s.split(',')
            .map(|t| match t.trim() {
                "" => bail!("--seeds {s}: an empty seed; give `1..8` or `1,4,9`"),
                t => t.parse::<u64>().map_err(|_| anyhow::anyhow!("--seeds {s}: '{t}' is not a seed (a whole number)")),
            })
            .collect::<Result<_>>()?
    };
    for (i, x) in seeds.iter().enumerate() {
        if seeds[..i].contains(x) {
            bail!("--seeds {s}: seed {x} is given twice");
        }
    }
    Ok(seeds)
}

/// `KEY=V1,V2,...`: the canonical key and each value with its text.
pub fn parse_sweep(s: &str) -> Result<(&'static str, Vec<(String, f32)>)> {
    let Some((key, values)) = s.split_once('=') else {
        bail!("--sweep takes KEY=V1,V2,... (got '{s}')");
    };
    let names = || KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ");
    let Some(&(key, _)) = KEYS.iter().find(|(_, spellings)| spellings.contains(&key.trim())) else {
        bail!("--sweep: unknown key '{}'; the keys are {}", key.trim(), names());
    };
    let mut out: Vec<(String, f32)> = Vec::new();
    for t in values.split(',') {
        let t = t.trim();
        if t.is_empty() {
            bail!("--sweep {key}: an empty value in '{s}'");
        }
        let v: f32 = t.parse().map_err(|_| anyhow::anyhow!("--sweep {key}: '{t}' is not a number"))?;
        if !v.is_finite() {
            bail!("--sweep {key}: '{t}' is not a finite number");
        }
        if out.iter().any(|(_, x)| *x == v) {
            bail!("--sweep {key}: the value {t} is given twice");
        }
        out.push((t.to_string(), v));
    }
    Ok((key, out))
}

/// Sets one swept value in a member's model file.
fn apply(spec: &mut ModelSpec, key: &str, text: &str, v: f32) -> Result<()> {
    match (key, &mut spec.train.optimizer) {
        ("lr", o) => o.set_lr(v),
        ("weight_decay", Optimizer::Adam { weight_decay, .. } | Optimizer::Sgd { weight_decay, .. }) => {
            *weight_decay = v
        }
        ("momentum", Optimizer::Sgd { momentum, .. }) => *momentum = v,
        ("momentum", Optimizer::Adam { .. }) => {
            bail!("--sweep momentum: {}'s optimizer is adam (its betas are not swept); momentum is sgd's", spec.name)
        }
        ("label_smoothing", _) if spec.train.loss != Loss::CrossEntropy => {
            bail!("--sweep label_smoothing: {} is trained with mse; label smoothing is the cross-entropy's", spec.name)
        }
        ("label_smoothing", _) => spec.train.label_smoothing = v,
        ("ema", _) => spec.train.ema = Some(v),
        ("dropout", _) => {
            let mut any = false;
            spec::for_each_mut(&mut spec.layers, &mut |l| {
                if let LayerSpec::Dropout { p } = l {
                    *p = v;
                    any = true;
                }
            });
            if !any {
                bail!("--sweep dropout: {} has no dropout layer", spec.name);
            }
            if !(0.0..1.0).contains(&v) {
                bail!("--sweep dropout={text}: dropout p must be in [0, 1)");
            }
        }
        _ => bail!("--sweep: unknown key '{key}'"),
    }
    Ok(())
}
