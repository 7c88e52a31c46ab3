//! The README and docs/ cannot rot unnoticed: every `gpu-train` command they show (in code
//! blocks and inline code) names a real subcommand and only flags that subcommand's own
//! `--help` lists; every script they tell a reader to run exists; the cheap commands shown
//! (`presets`, `presets NAME`) run. A renamed flag or subcommand fails here.

use std::collections::HashMap;

use crate::common::*;

/// README.md and docs/*.md, as (name, text).
fn pages() -> Vec<(String, String)> {
    let mut files = vec![repo().join("README.md")];
    for e in std::fs::read_dir(repo().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(repo()).unwrap().display().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The code a page shows: each line of a fenced block (a line ending in `\` joined to the
/// next) and each inline code span outside blocks.
fn code_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    let mut held = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            held.push_str(line.trim_end().trim_end_matches('\\'));
            if line.trim_end().ends_with('\\') {
                held.push(' ');
            } else {
                out.push(std::mem::take(&mut held));
            }
        } else {
            out.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
        }
    }
    out
}

/// The invocations in a line of code: what follows each `gpu-train` (or `cargo run --release
/// --`) up to a comment, pipe or `&&`, as words.
fn invocations(line: &str) -> Vec<Vec<String>> {
    let line = line.split(" #").next().unwrap();
    let mut out = Vec::new();
    for part in line.split(['|', ';']).flat_map(|p| p.split("&&")) {
        let words: Vec<&str> = part.split_whitespace().collect();
        let start = words.iter().position(|w| {
            w.trim_start_matches('$') == "gpu-train"
                || w.ends_with("/gpu-train")
                || *w == "--" && part.contains("cargo run")
        });
        let Some(start) = start else { continue };
        let rest: Vec<String> = words[start + 1..].iter().map(|w| w.to_string()).collect();
        if !rest.is_empty() {
            out.push(rest);
        }
    }
    out
}

fn help(sub: &str) -> String {
    let args: Vec<&str> = if sub.is_empty() { vec!["--help"] } else { vec![sub, "--help"] };
    let (code, out, err) = gpu_train_cmd(&args);
    assert_eq!(code, 0, "gpu-train {sub} --help: {err}");
    out
}

/// `--flag` as a whole word in a help text.
fn lists(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let after = help[i + flag.len()..].chars().next();
        let before = help[..i].chars().last();
        !after.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_')
            && !before.is_some_and(|c| c.is_alphanumeric() || c == '-')
    })
}

#[test]
fn every_command_in_the_readme_and_docs_uses_real_subcommands_and_flags() {
    let top = help("");
    // The subcommands, from the "Commands:" list of the top-level help.
    let subs: Vec<String> = top
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(subs.contains(&"train".to_string()) && subs.contains(&"eval".to_string()), "{subs:?}");
    let mut helps: HashMap<String, String> = HashMap::new();
    let mut checked = 0;
    let mut bad = Vec::new();
    for (page, text) in pages() {
        for line in code_lines(&text) {
            for words in invocations(&line) {
                // The default command is train; a first bare word must be a subcommand.
                let first = words[0].trim_matches(['[', ']']);
                let sub = if first.starts_with('-') {
                    "train".to_string()
                } else if subs.iter().any(|s| s == first) {
                    first.to_string()
                } else {
                    bad.push(format!("{page}: `{line}`: `{first}` is not a gpu-train subcommand ({subs:?})"));
                    continue;
                };
                let h = helps.entry(sub.clone()).or_insert_with(|| help(&sub));
                for w in &words {
                    let w = w.trim_matches(['[', ']', '(', ')', ',', '.', '"', '\'']);
                    if !w.starts_with("--") || w.len() < 3 {
                        continue;
                    }
                    let flag = w.split('=').next().unwrap();
                    checked += 1;
                    if !lists(h, flag) {
                        bad.push(format!("{page}: `{line}`: `gpu-train {sub} --help` has no {flag}"));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "commands in the docs the CLI does not take:\n{}", bad.join("\n"));
    assert!(checked > 50, "only {checked} flags found in the README and docs");
}

#[test]
fn every_script_the_docs_name_exists() {
    let mut bad = Vec::new();
    let mut seen = 0;
    for (page, text) in pages() {
        for line in code_lines(&text) {
            for w in line.split_whitespace() {
                let w = w.trim_matches(['[', ']', '(', ')', ',', '"', '\'', ':']);
                let script = [".py", ".sh"].iter().any(|x| w.ends_with(x))
                    && ["bench/", "web/", "models/", "tests/", ".ci/"].iter().any(|d| w.starts_with(d));
                if script && !w.contains(['*', '{', '<']) {
                    seen += 1;
                    if !repo().join(w).is_file() {
                        bad.push(format!("{page}: `{line}`: no {w}"));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "scripts the docs name that do not exist:\n{}", bad.join("\n"));
    assert!(seen > 5, "only {seen} scripts named in the README and docs");
}

/// The cheap commands the docs show run as shown: the presets list names every preset the
/// pages mention in `presets NAME`, and each prints a model file.
#[test]
fn the_cheap_commands_shown_run() {
    let (code, list, err) = gpu_train_cmd(&["presets"]);
    assert_eq!(code, 0, "{err}");
    let mut ran = 0;
    for (page, text) in pages() {
        for line in code_lines(&text) {
            for words in invocations(&line) {
                // A word in capitals (NAME) stands for the reader's choice.
                let placeholder = words.get(1).is_some_and(|w| w.chars().all(|c| c.is_ascii_uppercase()));
                if words[0] == "presets" && words.len() == 2 && !words[1].starts_with('-') && !placeholder {
                    let (code, out, err) = gpu_train_cmd(&["presets", &words[1]]);
                    assert_eq!(code, 0, "{page}: `gpu-train presets {}`: {err}", words[1]);
                    assert!(out.contains("layers = ["), "{page}: `gpu-train presets {}`: {out}", words[1]);
                    assert!(list.contains(&words[1]), "{page}: {} is not in `gpu-train presets`", words[1]);
                    ran += 1;
                }
            }
        }
    }
    assert!(ran >= 1, "no `gpu-train presets NAME` in the docs");
}
