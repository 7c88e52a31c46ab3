//! WebDataset's tar shards (`webdataset.TarWriter` / `ShardWriter`): each example is the run
//! of consecutive members sharing a key, the member's path up to the first dot of its file
//! name (`cat/0001.jpg` and `cat/0001.cls` are example `cat/0001`, members `jpg` and `cls`),
//! as WebDataset groups them; members without a dot, and `__name__` metadata, are skipped.
//!
//! The picture is the member whose extension is a picture's (`png`, `jpg`, ...; else the one
//! whose last extension is, as `seg.png`); the label is the `cls` member (else `class`,
//! `label` or `cls2`), an integer as text. Class names come from `classes.txt` (one name a
//! line, in label order) or `classes.json` (a list) in the `--data` folder or beside the
//! shards; without one, they are numbered up to the largest label. Shards may be gzipped
//! (`.tar.gz`, `.tgz`).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::folder::EXTENSIONS;
use super::records::{Picture, Record, Shards};
use crate::error::{Error, Result};

/// An example's members: (extension, contents), in the tar's order.
type Members = Vec<(String, Vec<u8>)>;

/// The members that may hold the label, in order of preference.
const LABELS: &[&str] = &["cls", "class", "label", "cls2"];

/// Tar shards and their class names.
pub struct WebDataset {
    classes: Option<Vec<String>>,
    classes_file: Option<PathBuf>,
}

/// Finds the class names for `shards` at `root`.
pub fn open(root: &Path, shards: &[PathBuf]) -> Result<WebDataset> {
    let mut dirs: Vec<&Path> = Vec::new();
    dirs.extend(if root.is_dir() { Some(root) } else { root.parent() });
    for s in shards {
        if let Some(d) = s.parent()
            && !dirs.contains(&d)
        {
            dirs.push(d);
        }
    }
    for d in dirs {
        let txt = d.join("classes.txt");
        if txt.is_file() {
            let text = std::fs::read_to_string(&txt).map_err(|e| Error::io(&txt, e))?;
            let names: Vec<String> = text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect();
            let names = trim_blank_tail(names);
            if names.is_empty() {
                return Err(Error::Data(format!("{}: no class names in it", txt.display())));
            }
            return Ok(WebDataset { classes: Some(names), classes_file: Some(txt) });
        }
        let json = d.join("classes.json");
        if json.is_file() {
            let text = std::fs::read_to_string(&json).map_err(|e| Error::io(&json, e))?;
            let names: Vec<String> = serde_json::from_str(&text)
                .map_err(|e| Error::Data(format!("{}: not a JSON list of class names ({e})", json.display())))?;
            if names.is_empty() {
                return Err(Error::Data(format!("{}: no class names in it", json.display())));
            }
            return Ok(WebDataset { classes: Some(names), classes_file: Some(json) });
        }
    }
    Ok(WebDataset { classes: None, classes_file: None })
}

fn trim_blank_tail(mut v: Vec<String>) -> Vec<String> {
    while v.last().is_some_and(|l| l.trim().is_empty()) {
        v.pop();
    }
    v
}

/// WebDataset's split of a member's path into key and extension (`base_plus_ext`): up to
/// the first dot of the file name, and the rest, lower-cased.
fn key_and_ext(path: &str) -> Option<(&str, String)> {
    let start = path.rfind('/').map_or(0, |i| i + 1);
    let dot = path[start..].find('.')? + start;
    (dot > start).then(|| (&path[..dot], path[dot + 1..].to_ascii_lowercase()))
}

fn is_picture_ext(ext: &str) -> bool {
    EXTENSIONS.contains(&ext)
}

/// One example's members as a record.
fn record(name: String, members: Members, classes: Option<&[String]>) -> Result<Record> {
    let exts = || members.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>().join(", ");
    let exact: Vec<usize> = (0..members.len()).filter(|&i| is_picture_ext(&members[i].0)).collect();
    let pics = if exact.is_empty() {
        (0..members.len()).filter(|&i| members[i].0.rsplit('.').next().is_some_and(is_picture_ext)).collect()
    } else {
        exact
    };
    let label = LABELS.iter().find_map(|l| members.iter().find(|(e, _)| e == l));
    let item = match (&pics[..], label) {
        ([], _) => Err(format!("no picture among its members ({})", exts())),
        ([_, _, ..], _) => Err(format!("several pictures among its members ({})", exts())),
        (_, None) => Err(format!("no class member (.cls) among its members ({})", exts())),
        ([i], Some((ext, text))) => {
            let text = String::from_utf8_lossy(text);
            match text.trim().parse::<i64>() {
                Err(_) => {
                    Err(format!("its .{ext} member is not an integer: {:?}", text.chars().take(40).collect::<String>()))
                }
                Ok(v) => {
                    let k = classes.map_or(1 << 24, |c| c.len() as i64);
                    if !(0..k).contains(&v) {
                        let within = match classes {
                            Some(c) => format!("outside the {} class names (classes.txt or classes.json)", c.len()),
                            None => "not a class number (0 to 2^24 - 1)".into(),
                        };
                        return Err(Error::Data(format!("{name}: label {v} is {within}")));
                    }
                    Ok((*i, v as u32))
                }
            }
        }
    };
    let item = item.map(|(i, label)| {
        let bytes = members.into_iter().nth(i).map(|(_, b)| b).unwrap_or_default();
        (Picture::Bytes(bytes), label)
    });
    Ok(Record { name, item })
}

impl Shards for WebDataset {
    fn classes(&self) -> Option<&[String]> {
        self.classes.as_deref()
    }

    fn key_lines(&self) -> Result<Vec<String>> {
        match &self.classes_file {
            Some(f) => Ok(vec![format!("classes\t{}\n", super::cache::stat_line(Path::new(""), f)?)]),
            None => Ok(Vec::new()),
        }
    }

    fn read(&self, shard: &Path) -> Result<Vec<Record>> {
        let file = std::fs::File::open(shard).map_err(|e| Error::io(shard, e))?;
        let file = std::io::BufReader::new(file);
        let name = shard.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        let input: Box<dyn Read> = if name.ends_with(".gz") || name.ends_with(".tgz") {
            Box::new(flate2::read::MultiGzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let bad = |e: std::io::Error| Error::Data(format!("{}: not a readable tar file: {e}", shard.display()));
        let mut archive = tar::Archive::new(input);
        // Consecutive members of one key: (key, [(extension, contents)]).
        let mut samples: Vec<(String, Members)> = Vec::new();
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if path.starts_with("__") && path.split('/').next().is_some_and(|p| p.len() > 4 && p.ends_with("__")) {
                continue;
            }
            let Some((key, ext)) = key_and_ext(&path) else { continue };
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).map_err(bad)?;
            match samples.last_mut() {
                Some((k, members)) if k == key => {
                    if members.iter().any(|(e, _)| *e == ext) {
                        return Err(Error::Data(format!("{}: example {key} has two .{ext} members", shard.display())));
                    }
                    members.push((ext, bytes));
                }
                _ => samples.push((key.to_string(), vec![(ext, bytes)])),
            }
        }
        samples
            .into_iter()
            .map(|(key, members)| record(format!("{}:{key}", shard.display()), members, self.classes.as_deref()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::key_and_ext;

    #[test]
    fn keys_are_paths_up_to_the_first_dot_of_the_file_name() {
        assert_eq!(key_and_ext("a/b.c/0001.seg.PNG"), Some(("a/b.c/0001", "seg.png".into())));
        assert_eq!(key_and_ext("0001.cls"), Some(("0001", "cls".into())));
        assert_eq!(key_and_ext("dir/.hidden.png"), None);
        assert_eq!(key_and_ext("README"), None);
    }
}
