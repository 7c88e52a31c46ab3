//! `--seeds`, `--sweep` and `--data-seed` of train and bench: the members of an array of
//! models trained side by side (`gpu_train::network::Members`), each with its own seed and
//! the swept values of its recipe.

use anyhow::{Result, bail};
use clap::Args;

use gpu_train::model::ModelSpec;
use gpu_train::model::spec::{self, LayerSpec, Loss, Optimizer};
use gpu_train::network::Member;
use gpu_train::train::shard::Part;

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
    /// Train only part I (0-based) of N of the array's members, for a job array on a cluster:
    /// `I/N`, or `auto` to take the part from Slurm's job array (SLURM_ARRAY_TASK_ID, _MIN,
    /// _COUNT, _STEP), or `auto/N` from a Kubernetes Indexed Job (JOB_COMPLETION_INDEX, N =
    /// its completions); `gpu-train gather --out` puts the parts back together
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<String>,
}

/// What to train: the members, the swept values each member's name carries, and whether it is
/// an array (--seeds or --sweep given) or one model.
pub struct Plan {
    pub members: Vec<Member>,
    pub tags: Vec<Vec<(String, String)>>,
    pub array: bool,
    pub data_seed: u64,
    /// The part of the sweep these members are (`--shard`).
    pub shard: Option<Part>,
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
        let mut plan = Plan { members, tags, array: self.is_array(), data_seed, shard: None };
        if let Some(s) = &self.shard {
            let (index, count, from) = parse_shard(s, &|k| std::env::var(k).ok())?;
            plan = plan.part(index, count)?;
            let r = plan.shard.as_ref().expect("part() sets it").members();
            println!(
                "shard: part {index} of {count}{from}: members {}..{} of the sweep's {}",
                r.start + 1,
                r.end,
                plan.shard.as_ref().map_or(0, |p| p.all.len())
            );
        }
        Ok(plan)
    }
}

impl Plan {
    /// Part `index` of `count` of the members (`train::shard::part`), keeping the whole
    /// sweep's list and data seed.
    pub fn part(self, index: usize, count: usize) -> Result<Plan> {
        let k = self.members.len();
        if !self.array || k < 2 {
            bail!("--shard splits an array's members (--seeds, --sweep) over several jobs; this run trains one model");
        }
        if count > k {
            bail!(
                "--shard {index}/{count}: {count} parts of {k} members would leave some parts empty; use at most {k}"
            );
        }
        let all: Vec<(u64, Vec<(String, String)>)> =
            self.members.iter().zip(&self.tags).map(|(m, t)| (m.seed, t.clone())).collect();
        let part = Part { index, count, all };
        let r = part.members();
        Ok(Plan {
            members: self.members[r.clone()].to_vec(),
            tags: self.tags[r].to_vec(),
            array: true,
            data_seed: self.data_seed,
            shard: Some(part),
        })
    }
}

/// `--shard`: `I/N`, `auto` (Slurm's job array) or `auto/N` (a Kubernetes Indexed Job's
/// index, or Slurm's checked against N): the part, its count, and where they came from.
pub fn parse_shard(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<(usize, usize, String)> {
    let (i, n) = s.split_once('/').map_or((s, None), |(i, n)| (i, Some(n)));
    let count = match n {
        Some(n) => match n.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Some(n),
            _ => bail!("--shard {s}: the number of parts must be a whole number of at least 1"),
        },
        None => None,
    };
    if i.trim() != "auto" {
        let Some(count) = count else {
            bail!(
                "--shard takes I/N (part I of N, counted from 0), `auto` (from Slurm's job array) or `auto/N`; got '{s}'"
            );
        };
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("--shard {s}: '{i}' is not a part number (0 to {})", count - 1))?;
        if index >= count {
            bail!(
                "--shard {s}: parts are counted from 0, so part {index} of {count} does not exist (0 to {})",
                count - 1
            );
        }
        return Ok((index, count, String::new()));
    }
    let num = |k: &str| -> Result<Option<i64>> {
        match env(k) {
            None => Ok(None),
            Some(v) => {
                v.trim().parse::<i64>().map(Some).map_err(|_| anyhow::anyhow!("--shard auto: {k}={v} is not a number"))
            }
        }
    };
    if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
        let (Some(min), Some(n)) = (num("SLURM_ARRAY_TASK_MIN")?, num("SLURM_ARRAY_TASK_COUNT")?) else {
            bail!(
                "--shard auto: SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT (Slurm 17.11 or later sets them)"
            );
        };
        let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        let max = num("SLURM_ARRAY_TASK_MAX")?;
        let from = format!(
            " (from Slurm: SLURM_ARRAY_TASK_ID={id}, MIN={min}, COUNT={n}, STEP={step}{})",
            max.map_or_else(String::new, |m| format!(", MAX={m}"))
        );
        let evenly = (id - min) % step == 0 && max.is_none_or(|max| min + (n - 1) * step == max);
        let index = (id - min) / step;
        if n < 1 || !evenly || index < 0 || index >= n {
            bail!(
                "--shard auto: the job array's task ids are not an evenly spaced range{from}; submit it as `--array=0-{}` (or A-B:STEP), or give --shard I/N",
                n.max(1) - 1
            );
        }
        if let Some(c) = count
            && c as i64 != n
        {
            bail!("--shard auto/{c}: the Slurm job array has {n} tasks{from}");
        }
        return Ok((index as usize, n as usize, from));
    }
    if let Some(index) = num("JOB_COMPLETION_INDEX")? {
        let Some(count) = count else {
            bail!(
                "--shard auto: JOB_COMPLETION_INDEX={index} (a Kubernetes Indexed Job) gives the part but not how many there are; use --shard auto/N with N = the Job's completions"
            );
        };
        if index < 0 || index as usize >= count {
            bail!("--shard auto/{count}: JOB_COMPLETION_INDEX={index} is not a part of {count} (0 to {})", count - 1);
        }
        return Ok((index as usize, count, format!(" (from Kubernetes: JOB_COMPLETION_INDEX={index})")));
    }
    bail!(
        "--shard auto: neither Slurm's job array (SLURM_ARRAY_TASK_ID) nor a Kubernetes Indexed Job (JOB_COMPLETION_INDEX) is set; run it as a job array's task (sbatch --array), or give --shard I/N"
    )
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
