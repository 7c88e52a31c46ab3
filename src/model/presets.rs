//! Presets: the model files in `models/`, embedded in the binary. Each of the seeds' models
//! has one; the six main ones also answer to their seed name (`cnn4` is seed B's model 12,
//! `b12`). `--arch` takes a preset name or a path to a `.toml` file.

use std::path::Path;

use super::spec::ModelSpec;
use crate::error::{Error, Result};

pub struct Preset {
    pub name: &'static str,
    pub alias: Option<&'static str>,
    pub source: &'static str,
}

pub const PRESETS: &[Preset] = &[
    Preset { name: "mlp", alias: Some("a-fc1"), source: include_str!("../../models/mlp.toml") },
    Preset { name: "cnn-a", alias: Some("a-cnn7"), source: include_str!("../../models/cnn-a.toml") },
    Preset { name: "fc-b", alias: Some("b8"), source: include_str!("../../models/fc-b.toml") },
    Preset { name: "cnn2", alias: Some("b9"), source: include_str!("../../models/cnn2.toml") },
    Preset { name: "cnn3", alias: Some("b10"), source: include_str!("../../models/cnn3.toml") },
    Preset { name: "cnn4", alias: Some("b12"), source: include_str!("../../models/cnn4.toml") },
    Preset { name: "cnn5", alias: None, source: include_str!("../../models/cnn5.toml") },
    Preset { name: "cnn6", alias: None, source: include_str!("../../models/cnn6.toml") },
    Preset { name: "vgg", alias: None, source: include_str!("../../models/vgg.toml") },
    Preset { name: "speedrun", alias: None, source: include_str!("../../models/speedrun.toml") },
    Preset { name: "resnet20", alias: None, source: include_str!("../../models/resnet20.toml") },
    Preset { name: "resnet20-gray", alias: None, source: include_str!("../../models/resnet20-gray.toml") },
    Preset { name: "a-cnn1", alias: None, source: include_str!("../../models/seeds/a-cnn1.toml") },
    Preset { name: "a-cnn2", alias: None, source: include_str!("../../models/seeds/a-cnn2.toml") },
    Preset { name: "a-cnn3", alias: None, source: include_str!("../../models/seeds/a-cnn3.toml") },
    Preset { name: "a-cnn4", alias: None, source: include_str!("../../models/seeds/a-cnn4.toml") },
    Preset { name: "a-cnn5", alias: None, source: include_str!("../../models/seeds/a-cnn5.toml") },
    Preset { name: "a-cnn6", alias: None, source: include_str!("../../models/seeds/a-cnn6.toml") },
    Preset { name: "a-cnn8", alias: None, source: include_str!("../../models/seeds/a-cnn8.toml") },
    Preset { name: "a-fc2", alias: None, source: include_str!("../../models/seeds/a-fc2.toml") },
    Preset { name: "a-fc3", alias: None, source: include_str!("../../models/seeds/a-fc3.toml") },
    Preset { name: "a-fc4", alias: None, source: include_str!("../../models/seeds/a-fc4.toml") },
    Preset { name: "a-fc5", alias: None, source: include_str!("../../models/seeds/a-fc5.toml") },
    Preset { name: "a-fc6", alias: None, source: include_str!("../../models/seeds/a-fc6.toml") },
    Preset { name: "a-fc7", alias: None, source: include_str!("../../models/seeds/a-fc7.toml") },
    Preset { name: "b1", alias: None, source: include_str!("../../models/seeds/b1.toml") },
    Preset { name: "b2", alias: None, source: include_str!("../../models/seeds/b2.toml") },
    Preset { name: "b3", alias: None, source: include_str!("../../models/seeds/b3.toml") },
    Preset { name: "b4", alias: None, source: include_str!("../../models/seeds/b4.toml") },
    Preset { name: "b5", alias: None, source: include_str!("../../models/seeds/b5.toml") },
    Preset { name: "b6", alias: None, source: include_str!("../../models/seeds/b6.toml") },
    Preset { name: "b7", alias: None, source: include_str!("../../models/seeds/b7.toml") },
    Preset { name: "b11", alias: None, source: include_str!("../../models/seeds/b11.toml") },
];

/// Parses a model file's text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<ModelSpec> {
    toml::from_str(text).map_err(|e| {
        let msg = e.to_string().replace('\n', " ");
        Error::arch(origin, msg.split_whitespace().collect::<Vec<_>>().join(" "))
    })
}

/// The preset called `name` (or by its seed alias).
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name || p.alias == Some(name))
}

/// Resolves `--arch`: a preset name, or a path to a model file.
pub fn load(arch: &str) -> Result<ModelSpec> {
    if let Some(p) = find(arch) {
        return parse(p.source, p.name);
    }
    let path = Path::new(arch);
    if arch.ends_with(".toml") || path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        return parse(&text, arch);
    }
    Err(Error::UnknownPreset {
        name: arch.to_string(),
        known: PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
    })
}
