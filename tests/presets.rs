//! Model files and presets: every file in models/ is a preset and resolves; the seed models
//! have the seeds' shapes; tensors are named as torch.nn.Sequential names them; malformed
//! files fail with messages that say what is wrong. The presets' plans fuse batch norm with
//! the activation after it only where nothing else reads batch norm's output.

use crate::common::*;
use gpu_train::model::{Arch, Layer, Shape, presets};

fn arch(name: &str) -> Arch {
    Arch::new(presets::load(name).unwrap()).unwrap()
}

#[test]
fn every_model_file_is_an_embedded_preset_that_resolves() {
    let mut files = Vec::new();
    for dir in ["models", "models/seeds"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                files.push(p);
            }
        }
    }
    assert_eq!(files.len(), presets::PRESETS.len(), "every model file is embedded, and nothing else");
    for f in files {
        let stem = f.file_stem().unwrap().to_str().unwrap();
        let p = presets::find(stem).unwrap_or_else(|| panic!("{stem} is not a preset"));
        assert_eq!(p.source, std::fs::read_to_string(&f).unwrap(), "{stem}: embedded copy is stale");
        let a = Arch::new(presets::parse(p.source, p.name).unwrap()).unwrap();
        assert_eq!(a.name(), stem);
        assert_eq!(a.classes(), 10);
        a.recipe().validate().unwrap();
    }
    // Seed names reach the main presets.
    for (alias, name) in
        [("a-fc1", "mlp"), ("a-cnn7", "cnn-a"), ("b8", "fc-b"), ("b9", "cnn2"), ("b10", "cnn3"), ("b12", "cnn4")]
    {
        assert_eq!(presets::find(alias).unwrap().name, name);
    }
}

#[test]
fn seed_architectures_have_the_seeds_shapes() {
    let flat_in = |a: &Arch| {
        a.layers.iter().zip(&a.shapes).find(|(l, _)| matches!(l, Layer::Flatten)).map(|(_, s)| s.len()).unwrap()
    };
    assert_eq!(flat_in(&arch("cnn4")), 64 * 7 * 7);
    assert_eq!(flat_in(&arch("cnn3")), 48 * 7 * 7);
    assert_eq!(flat_in(&arch("cnn2")), 16 * 7 * 7);
    assert_eq!(flat_in(&arch("cnn-a")), 4 * 13 * 13);
    assert_eq!(flat_in(&arch("a-cnn3")), 363);
    assert_eq!(flat_in(&arch("a-cnn6")), 162);
    assert_eq!(arch("cnn4").param_count(), 159_930);
    assert_eq!(arch("mlp").param_count(), 784 * 200 + 200 + 200 * 80 + 80 + 80 * 10 + 10);
    assert_eq!(arch("fc-b").param_count(), 784 * 128 + 128 + 128 * 50 + 50 + 50 * 10 + 10);
    // cnn4 keeps 28x28 through two convolutions before the first pooling.
    let a = arch("cnn4");
    assert_eq!(a.shapes[4], Shape::Image { c: 32, h: 28, w: 28 });
    assert_eq!(a.shapes[6], Shape::Image { c: 32, h: 14, w: 14 });
    let r = a.recipe();
    assert_eq!((r.batch, r.epochs), (16, 150));
    assert_eq!(r.augment.unwrap().chance, 0.8);
    assert_eq!(r.early_stopping.unwrap().patience, 15);
}

/// cnn6, our no-pooling design: five valid 5x5 convolutions take 28x28 down to 8x8, and one
/// dense layer with batch norm on its logits classifies the 8x8x80 map.
#[test]
fn cnn6_shrinks_the_image_without_pooling() {
    let a = arch("cnn6");
    let convs: Vec<Shape> =
        a.layers.iter().zip(&a.shapes[1..]).filter(|(l, _)| matches!(l, Layer::Conv2d(_))).map(|(_, s)| *s).collect();
    let image = |c, h| Shape::Image { c, h, w: h };
    assert_eq!(convs, [image(16, 24), image(32, 20), image(48, 16), image(64, 12), image(80, 8)]);
    assert!(!a.layers.iter().any(|l| matches!(l, Layer::MaxPool2d(_) | Layer::Dropout { .. })));
    assert!(matches!(a.layers.last(), Some(Layer::BatchNorm(_))));
    let convs = 25 * (16 + 32 * 16 + 48 * 32 + 64 * 48 + 80 * 64);
    let batch_norms = 2 * (16 + 32 + 48 + 64 + 80 + 10);
    assert_eq!(a.param_count(), convs + 8 * 8 * 80 * 10 + batch_norms);
}

#[test]
fn tensors_are_named_like_torch_sequential() {
    let names: Vec<String> = arch("cnn4").params.iter().map(|t| t.name.clone()).collect();
    assert_eq!(
        names,
        [
            "0.weight",
            "0.bias",
            "3.weight",
            "3.bias",
            "7.weight",
            "7.bias",
            "10.weight",
            "10.bias",
            "15.weight",
            "15.bias"
        ]
    );
    let a = arch("cnn4");
    assert_eq!(a.params[0].shape, vec![16, 1, 5, 5]);
    assert_eq!(a.params[8].shape, vec![10, 3136]);
    assert_eq!(arch("mlp").params[0].name, "1.weight");
    assert!(a.params.iter().all(|t| t.offset % gpu_train::model::TENSOR_ALIGN == 0));
}

/// A residual block's tensors are named inside it, as a torch module with `body` and
/// `shortcut` Sequentials names them; the block (an identity shortcut adds none) and the
/// layers after it keep their top-level indices.
#[test]
fn residual_tensors_are_named_by_block() {
    let a = arch("resnet20");
    let names: Vec<&str> = a.params.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names[..5], ["0.weight", "1.weight", "1.bias", "3.body.0.weight", "3.body.1.weight"]);
    assert!(names.contains(&"9.shortcut.0.weight") && names.contains(&"9.shortcut.1.bias"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("3.shortcut")), "an identity shortcut has no tensors");
    assert_eq!(*names.last().unwrap(), "23.bias");
    assert_eq!(a.param_count(), 272_474);
    assert_eq!(a.output(), gpu_train::model::Shape::Flat(10));
    // The summary shows each block on a line of its own with its layers under it.
    let s = a.summary();
    assert!(s.contains("residual, identity shortcut") && s.contains("shortcut.0"), "{s}");
}

/// Every model file shown in the README or in docs/*.md (```toml blocks with a layer list) is
/// one that gpu-train takes as it stands: it parses, its recipe is valid and its shapes resolve.
#[test]
fn the_readmes_model_files_build() {
    let mut files = vec![("README.md".to_string(), repo().join("README.md"))];
    for entry in std::fs::read_dir(repo().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
            files.push((name, path));
        }
    }
    files.sort();
    let mut blocks: Vec<(String, String)> = Vec::new();
    for (name, path) in &files {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        for block in text.split("```toml\n").skip(1).filter_map(|b| b.split("```").next()) {
            if block.contains("layers = [") {
                blocks.push((name.clone(), block.to_string()));
            }
        }
    }
    assert!(blocks.len() >= 2, "the model files in README.md and docs/*.md: {}", blocks.len());
    for (name, text) in &blocks {
        let spec = presets::parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        spec.train.validate().unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        Arch::new(spec).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
    }
}

#[test]
fn malformed_model_files_fail_with_a_reason() {
    let cases = [
        ("name = 'x'\nlayers = [{ type = 'dense', units = 10 }]", "flatten"),
        ("name = 'x'\nlayers = [{ type = 'flatten' }, { type = 'dense', units = 10, size = 3 }]", "size"),
        ("name = 'x'\nlayers = [{ type = 'flatten' }, { type = 'softmax' }]", "softmax"),
        ("name = 'x'\nlayers = []", "empty"),
        ("name = 'x'\nlayers = [{ type = 'conv2d', filters = 2, kernel = 30 }, { type = 'flatten' }]", "larger"),
        (
            "name = 'x'\nlayers = [{ type = 'flatten' }, { type = 'dropout', p = 1.0 }, { type = 'dense', units = 10 }]",
            "dropout",
        ),
        ("name = 'x'\nlayers = [{ type = 'conv2d', filters = 2, kernel = 3 }]", "flat vector"),
        ("name = 'x'\nlayers = [{ type = 'flatten' }]", "conv2d or dense"),
        ("name = 'x'\nlayers = [{ type = 'flatten' }, { type = 'dense', units = 10 }]\n[train]\nbogus = 1", "bogus"),
        ("name = 'x'\nlayers = [ { type = 'flatten' ", "TOML"),
        ("layers = [{ type = 'flatten' }, { type = 'dense', units = 10 }]", "name"),
        // Residual blocks: branches that disagree name both shapes; an empty body; a typo
        // inside a block; pooling and activations with bad settings.
        (
            "name = 'x'\nlayers = [{ type = 'residual', layers = [{ type = 'conv2d', filters = 4, kernel = 3 }] }, { type = 'flatten' }, { type = 'dense', units = 10 }]",
            "body gives 4x26x26 but its identity shortcut passes 1x28x28",
        ),
        (
            "name = 'x'\nlayers = [{ type = 'residual', layers = [{ type = 'conv2d', filters = 4, kernel = 3, padding = 1 }], shortcut = [{ type = 'avg_pool2d' }] }, { type = 'flatten' }, { type = 'dense', units = 10 }]",
            "layer 0: residual block: its body gives 4x28x28 but its shortcut gives 1x14x14",
        ),
        (
            "name = 'x'\nlayers = [{ type = 'residual', layers = [] }, { type = 'flatten' }, { type = 'dense', units = 10 }]",
            "body",
        ),
        (
            "name = 'x'\nlayers = [{ type = 'residual', layers = [{ type = 'conv2d', filters = 1, kernal = 3 }] }, { type = 'flatten' }, { type = 'dense', units = 10 }]",
            "kernal",
        ),
        (
            "name = 'x'\nlayers = [{ type = 'residual', layers = [{ type = 'residual', layers = [{ type = 'conv2d', filters = 2, kernel = 3 }] }] }, { type = 'flatten' }, { type = 'dense', units = 10 }]",
            "layer 0.body.0:",
        ),
        (
            "name = 'x'\nlayers = [{ type = 'flatten' }, { type = 'global_avg_pool' }, { type = 'dense', units = 10 }]",
            "image input",
        ),
        (
            "name = 'x'\nlayers = [{ type = 'avg_pool2d', size = 40 }, { type = 'flatten' }, { type = 'dense', units = 10 }]",
            "avg_pool2d size 40",
        ),
        (
            "name = 'x'\nlayers = [{ type = 'leaky_relu', slope = -1 }, { type = 'flatten' }, { type = 'dense', units = 10 }]",
            "slope",
        ),
        (
            "name = 'x'\nlayers = [{ type = 'flatten' }, { type = 'dense', units = 10 }]\n[train]\nlabel_smoothing = 1.5",
            "label_smoothing",
        ),
        (
            "name = 'x'\nlayers = [{ type = 'flatten' }, { type = 'dense', units = 10 }]\n[train]\noptimizer = { type = 'sgd', lr = 0.1, nesterov = true }",
            "nesterov",
        ),
    ];
    for (text, want) in cases {
        let err = presets::parse(text, "test.toml")
            .and_then(|s| s.train.validate().map_err(gpu_train::error::Error::Config).map(|_| s))
            .and_then(Arch::new)
            .unwrap_err()
            .to_string();
        assert!(err.to_lowercase().contains(&want.to_lowercase()), "expected '{want}' in: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
    let err = presets::load("no-such-model").unwrap_err().to_string();
    assert!(err.contains("unknown preset") && err.contains("cnn4"), "{err}");
}

/// Batch norm fuses the activation after it (and a dropout after a relu, in training) where
/// nothing else reads its output, and its backward then runs no epilogue step; in a residual
/// block a batch norm before the `Add` stays unfused, and so does the relu after the `Add`.
#[test]
fn batch_norm_fuses_its_activation_only_where_nothing_else_reads_it() {
    use gpu_train::network::plan::{Step, backward, plan};
    let bn_nodes = |a: &Arch, train: bool| {
        let p = plan(a, train);
        p.nodes.into_iter().filter(|n| matches!(a.layers[n.layer], Layer::BatchNorm(_))).collect::<Vec<_>>()
    };
    // cnn6: five conv, BN, relu and a last BN on the logits (nothing after it).
    let cnn6 = arch("cnn6");
    let fused: Vec<bool> = bn_nodes(&cnn6, true).iter().map(|n| n.fused.is_some()).collect();
    assert_eq!(fused, [true, true, true, true, true, false]);
    let train = plan(&cnn6, true);
    assert!(train.nodes.iter().all(|n| !matches!(cnn6.layers[n.layer], Layer::Act(_))));
    let steps = backward(&cnn6, &train).steps;
    assert!(steps.iter().all(|s| !matches!(s, Step::Epilogue { .. })), "{steps:?}");
    // resnet20: a block's first BN fuses its relu; the BN before the Add (and the
    // projection's) stays unfused, the relu after the Add runs on its own.
    let res = arch("resnet20");
    let p = plan(&res, true);
    for n in bn_nodes(&res, true) {
        let next = res.layers.get(n.layer + 1);
        assert_eq!(
            n.fused.is_some(),
            matches!(next, Some(Layer::Act(_))),
            "layer {} ({})",
            n.layer,
            res.names[n.layer]
        );
    }
    let adds = p.nodes.iter().filter(|n| matches!(res.layers[n.layer], Layer::Add { .. })).count();
    let relus = p.nodes.iter().filter(|n| matches!(res.layers[n.layer], Layer::Act(_))).count();
    assert_eq!((adds, relus), (9, 9), "every block's relu after its Add stays an op of its own");
    // Dropout after BN + relu joins the fusion in training; evaluation skips it.
    let spec = "name = 'bnd'\ninput = [1, 8, 8]\nlayers = [{ type = 'conv2d', filters = 3, kernel = 3 }, { type = 'batch_norm' }, \
                { type = 'relu' }, { type = 'dropout', p = 0.3 }, { type = 'flatten' }, { type = 'dense', units = 10 }]\n";
    let bnd = Arch::new(presets::parse(spec, "bnd").unwrap()).unwrap();
    let (t, e) = (bn_nodes(&bnd, true)[0], bn_nodes(&bnd, false)[0]);
    assert_eq!((t.fused, t.dropout, t.out), (Some(gpu_train::model::Act::Relu), Some(3), 4));
    assert_eq!((e.fused, e.dropout, e.out), (Some(gpu_train::model::Act::Relu), None, 4));
}
