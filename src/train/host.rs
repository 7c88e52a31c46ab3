//! Where a run's output goes. The trainer only computes and reports; a host shows and keeps
//! what it reports: natively the terminal and files (`FileHost`), in a browser the page
//! (`web/`). This is the seam that keeps the trainer the same on both sides, as burn's trainer
//! emits events that a renderer shows.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{Error, Result};

pub trait Host {
    /// One line of news: an epoch's figures, early stopping, a note.
    fn say(&mut self, line: &str);

    /// Steps done of epoch `epoch` (0-based) of `epochs`, with the running loss when known.
    fn progress(&mut self, _epoch: usize, _epochs: usize, _done: usize, _steps: usize, _loss: Option<f64>) {}

    /// The epoch's steps are all done (a progress bar goes away).
    fn progress_done(&mut self) {}

    /// Starts the log at `path` empty (a fresh run) or keeps what it holds (a resumed one).
    fn log_start(&mut self, path: &Path, keep: bool) -> Result<()>;

    /// Appends one line to the log at `path`.
    fn log(&mut self, path: &Path, line: &str) -> Result<()>;

    /// Keeps `bytes` as the file `path`, whole (a model, a checkpoint, a manifest).
    fn save(&mut self, path: &Path, bytes: &[u8]) -> Result<()>;

    /// The runs a TensorBoard log would show (`--tensorboard`): each member, then an array's
    /// ensemble; `resumed`: a run continued from its checkpoint. Hosts without one ignore it.
    fn board_start(&mut self, _runs: &[BoardRun], _resumed: bool) -> Result<()> {
        Ok(())
    }

    /// Scalars of run `run` (an index into `board_start`'s) at `step`, at wall time `wall`
    /// (seconds since 1970).
    fn board_scalars(&mut self, _run: usize, _step: i64, _wall: f64, _values: &[(&str, f64)]) -> Result<()> {
        Ok(())
    }

    /// Run `run` has ended (`ok` false: its loss diverged).
    fn board_end(&mut self, _run: usize, _ok: bool) -> Result<()> {
        Ok(())
    }
}

/// A run as TensorBoard shows it: its folder's name and, for an array's member, the values
/// that tell it from the others (seed and swept keys: the hparams plugin's columns).
#[derive(Debug, Clone)]
pub struct BoardRun {
    pub name: String,
    pub hparams: Vec<(String, String)>,
}

/// The terminal and the file system: lines on stdout, a progress bar on stderr (drawn only
/// when it is a terminal), logs appended to files, files written atomically.
pub struct FileHost {
    progress: bool,
    bar: Option<ProgressBar>,
    logs: HashMap<PathBuf, std::fs::File>,
    /// `--tensorboard DIR`: the folder, and a writer per run once they start.
    board: Option<(PathBuf, Vec<(crate::tensorboard::EventWriter, bool)>)>,
}

impl FileHost {
    pub fn new(progress: bool) -> FileHost {
        FileHost { progress, bar: None, logs: HashMap::new(), board: None }
    }

    /// Also writes TensorBoard event files, a folder per run under `dir`.
    pub fn with_tensorboard(mut self, dir: Option<PathBuf>) -> FileHost {
        self.board = dir.map(|d| (d, Vec::new()));
        self
    }
}

impl Host for FileHost {
    fn say(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    fn progress(&mut self, epoch: usize, epochs: usize, done: usize, steps: usize, loss: Option<f64>) {
        if !self.progress {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(steps as u64);
            let style =
                ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} steps, {per_sec}, ETA {eta} {msg}")
                    .map(|s| s.progress_chars("=> "))
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
            bar
        });
        bar.set_position(done as u64);
        if let Some(l) = loss {
            bar.set_message(format!("loss {l:.4}"));
        }
    }

    fn progress_done(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn log_start(&mut self, path: &Path, keep: bool) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(keep)
            .truncate(!keep)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        self.logs.insert(path.to_path_buf(), file);
        Ok(())
    }

    fn log(&mut self, path: &Path, line: &str) -> Result<()> {
        if !self.logs.contains_key(path) {
            self.log_start(path, true)?;
        }
        let file = self.logs.get_mut(path).ok_or_else(|| Error::Config(format!("no log {}", path.display())))?;
        writeln!(file, "{line}").map_err(|e| Error::io(path, e))
    }

    fn save(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        crate::modelfile::write_atomic(path, bytes)
    }

    fn board_start(&mut self, runs: &[BoardRun], resumed: bool) -> Result<()> {
        let Some((dir, writers)) = &mut self.board else { return Ok(()) };
        writers.clear();
        for r in runs {
            let mut w = crate::tensorboard::EventWriter::create(&dir.join(&r.name))?;
            // A resumed session's start is already on record in its earlier file.
            let session = !r.hparams.is_empty();
            if session && !resumed {
                w.session_start(&r.hparams)?;
            }
            writers.push((w, session));
        }
        if let Some((w, _)) = writers.first() {
            let shown = if runs.len() == 1 { w.path().parent().unwrap_or(dir).to_path_buf() } else { dir.clone() };
            self.say(&format!("TensorBoard: tensorboard --logdir {}", shown.display()));
        }
        Ok(())
    }

    fn board_scalars(&mut self, run: usize, step: i64, wall: f64, values: &[(&str, f64)]) -> Result<()> {
        match &mut self.board {
            Some((_, writers)) if run < writers.len() => writers[run].0.scalars(step, wall, values),
            _ => Ok(()),
        }
    }

    fn board_end(&mut self, run: usize, ok: bool) -> Result<()> {
        match &mut self.board {
            Some((_, writers)) if run < writers.len() && writers[run].1 => writers[run].0.session_end(ok),
            _ => Ok(()),
        }
    }
}
