//! Evaluation: outputs over a whole data set in batches, each member's loss, accuracy and
//! scores, and the ensemble of their probabilities.

use super::{DeviceData, Network};
use crate::backend::Backend;
use crate::error::Result;
use crate::model::spec::Loss;

/// Loss, accuracy and per-example scores of an evaluation.
#[derive(Debug, Clone)]
pub struct EvalResult {
    pub loss: f64,
    pub correct: usize,
    pub count: usize,
    /// (count, classes): softmax probabilities (cross-entropy) or raw outputs (MSE).
    pub scores: Vec<f32>,
}

impl EvalResult {
    pub fn accuracy(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.correct as f64 / self.count as f64 }
    }
}

/// An evaluation of every member of a network, and of their ensemble (the average of their
/// probabilities, or outputs for an MSE model); for one model, the ensemble is the model.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub members: Vec<EvalResult>,
    pub ensemble: EvalResult,
}

impl<B: Backend> Network<B> {
    /// Runs examples `start..start + n` of `data` through the evaluation plan (no dropout,
    /// batch-norm running statistics), leaving their outputs (n, members x classes) in
    /// `acts[eval_plan.out]`.
    fn forward_eval(&mut self, b: &mut B, data: &DeviceData<B>, start: usize, n: usize) {
        let g = self.gather(start, n, data, None);
        data.gather(b, &mut self.acts[0], &mut self.labels, &data.order, &g);
        self.forward(b, n, false, 0);
    }

    /// The final layer's outputs for a whole data set, (count, members x classes), in
    /// evaluation mode: the logits of a cross-entropy model, which `evaluate` turns into
    /// probabilities. Reads back once per batch.
    pub async fn outputs(&mut self, b: &mut B, data: &DeviceData<B>) -> Result<Vec<f32>> {
        let width = self.arch.output().len();
        let mut out = Vec::with_capacity(data.len * width);
        for start in (0..data.len).step_by(self.cap) {
            let n = self.cap.min(data.len - start);
            self.forward_eval(b, data, start, n);
            out.extend(b.download(&self.acts[self.eval_plan.out], n * width).await?);
        }
        Ok(out)
    }

    /// Evaluates the first (or only) member on a whole data set (no dropout, batch-norm
    /// running statistics): loss, accuracy and every example's scores.
    pub async fn evaluate(&mut self, b: &mut B, data: &DeviceData<B>) -> Result<EvalResult> {
        let all = vec![true; self.len()];
        Ok(self.evaluate_all(b, data, true, &all).await?.members.swap_remove(0))
    }

    /// Every member and the ensemble of those `include` names on a whole data set, in batches
    /// of the buffers' capacity; with `keep`, every example's scores too. One model reads back
    /// once at the end; an array reads each batch's probabilities back for the ensemble (in
    /// memory for one batch of them, however many classes).
    pub async fn evaluate_all(
        &mut self,
        b: &mut B,
        data: &DeviceData<B>,
        keep: bool,
        include: &[bool],
    ) -> Result<Evaluation> {
        let (k, classes) = (self.len(), self.arch.classes());
        let width = k * classes;
        let batches = data.len.div_ceil(self.cap);
        let per_batch = k > 1;
        let rows = if keep && !per_batch { data.len } else { self.cap.min(data.len) };
        crate::memory::check_host(
            &format!("the scores of {rows} examples of {classes} classes"),
            4 * (rows * width) as u64 * if keep && per_batch { data.len.div_ceil(rows.max(1)) as u64 } else { 1 },
            "evaluate fewer examples at once",
        )?;
        let mut probs = b.alloc((rows * width).max(1))?;
        let mut stats = b.alloc((2 * batches * k).max(1))?;
        let mut ensemble = Ensemble::new(classes, self.loss, keep);
        let mut kept = vec![Vec::new(); if keep && per_batch { k } else { 0 }];
        // Said before the first batch too, which on a slow adapter takes seconds.
        crate::progress::set("testing", 0, batches);
        for i in 0..batches {
            let start = i * self.cap;
            let n = self.cap.min(data.len - start);
            self.forward_eval(b, data, start, n);
            let logits = &self.acts[self.eval_plan.out];
            let at = if keep && !per_batch { start } else { 0 };
            match self.loss {
                Loss::CrossEntropy => {
                    b.softmax_xent_forward(&mut probs, at, &mut stats, i, logits, &self.labels, n, k, classes)
                }
                Loss::Mse => b.mse_forward(&mut probs, at, &mut stats, i, logits, &self.labels, n, k, classes),
            }
            if per_batch {
                let p = b.download(&probs, n * width).await?;
                ensemble.add(&p, include, &data.host_labels()[start..start + n]);
                for (m, scores) in kept.iter_mut().enumerate() {
                    scores.extend(p.chunks(classes).skip(m).step_by(k).flatten());
                }
            } else if crate::progress::watched() {
                // A page shows how far a test has got: wait for this batch (which lets the
                // browser's event loop turn) and say so.
                b.download(&stats, 2).await?;
            }
            crate::progress::set("testing", i + 1, batches);
        }
        crate::progress::clear();
        let stats = b.download(&stats, 2 * batches * k).await?;
        if keep && !per_batch {
            kept.push(b.download(&probs, data.len * classes).await?);
        }
        let mut kept = kept.into_iter();
        let members: Vec<EvalResult> = (0..k)
            .map(|m| {
                let loss: f64 = (0..batches).map(|i| stats[2 * (i * k + m)] as f64).sum();
                let correct: f64 = (0..batches).map(|i| stats[2 * (i * k + m) + 1] as f64).sum();
                EvalResult {
                    loss: if data.len == 0 { 0.0 } else { loss / data.len as f64 },
                    correct: correct.round() as usize,
                    count: data.len,
                    scores: kept.next().unwrap_or_default(),
                }
            })
            .collect();
        let ensemble = if per_batch { ensemble.result() } else { members[0].clone() };
        Ok(Evaluation { members, ensemble })
    }
}

/// The ensemble of members' kept test scores (each `labels.len() * classes`, example-major),
/// those `include` names averaged: the same arithmetic, in the same order, as
/// `Network::evaluate_all` gives an array (so a sweep gathered from its parts has the
/// unsharded array's ensemble exactly).
pub fn ensemble_of(scores: &[&[f32]], include: &[bool], labels: &[u32], classes: usize, loss: Loss) -> EvalResult {
    let mut e = Ensemble::new(classes, loss, false);
    let mut row = vec![0f32; scores.len() * classes];
    for (i, &y) in labels.iter().enumerate() {
        for (m, s) in scores.iter().enumerate() {
            row[m * classes..(m + 1) * classes].copy_from_slice(&s[i * classes..(i + 1) * classes]);
        }
        e.add(&row, include, &[y]);
    }
    e.result()
}

/// The ensemble of an array's members, example by example: the average of their
/// probabilities (or outputs, for MSE), its loss as the model's loss function defines it
/// (cross-entropy of the average), and whether its first maximum is the label.
struct Ensemble {
    classes: usize,
    loss_kind: Loss,
    keep: bool,
    loss: f64,
    correct: usize,
    count: usize,
    scores: Vec<f32>,
}

impl Ensemble {
    fn new(classes: usize, loss_kind: Loss, keep: bool) -> Ensemble {
        Ensemble { classes, loss_kind, keep, loss: 0.0, correct: 0, count: 0, scores: Vec::new() }
    }

    /// One batch: `p` (n, members, classes); the members `include` names are averaged.
    fn add(&mut self, p: &[f32], include: &[bool], labels: &[u32]) {
        let c = self.classes;
        let count = include.iter().filter(|&&i| i).count().max(1);
        for (row, &y) in p.chunks(include.len() * c).zip(labels) {
            let mut avg = vec![0f64; c];
            for (m, _) in row.chunks(c).zip(include).filter(|x| *x.1) {
                avg.iter_mut().zip(m).for_each(|(a, &v)| *a += v as f64);
            }
            avg.iter_mut().for_each(|a| *a /= count as f64);
            let y = y as usize;
            self.loss += match self.loss_kind {
                Loss::CrossEntropy => -avg[y].max(f64::MIN_POSITIVE).ln(),
                Loss::Mse => {
                    avg.iter().enumerate().map(|(j, &a)| (a - f64::from(u8::from(j == y))).powi(2)).sum::<f64>()
                        / c as f64
                }
            };
            let best = avg.iter().enumerate().fold(0, |b, (j, &v)| if v > avg[b] { j } else { b });
            self.correct += usize::from(best == y);
            self.count += 1;
            if self.keep {
                self.scores.extend(avg.iter().map(|&a| a as f32));
            }
        }
    }

    fn result(self) -> EvalResult {
        EvalResult {
            loss: if self.count == 0 { 0.0 } else { self.loss / self.count as f64 },
            correct: self.correct,
            count: self.count,
            scores: self.scores,
        }
    }
}
