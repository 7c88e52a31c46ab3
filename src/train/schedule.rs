//! Learning-rate schedules: the rate for epoch `e` (0-based) is a pure function of the epoch
//! (or, for `one_cycle`, of the step), so a resumed run picks up exactly where it stopped.

use crate::model::spec::Schedule;

/// The rate for step `step` (0-based) of epoch `epoch` when an epoch has `steps` steps: the
/// epoch's rate, except for the step-wise `one_cycle`.
pub fn lr_at_step(schedule: &Schedule, base: f32, epoch: usize, epochs: usize, step: usize, steps: usize) -> f32 {
    let Schedule::OneCycle { warmup, start, final_lr } = *schedule else {
        return lr_at(schedule, base, epoch, epochs);
    };
    let total = (epochs * steps).max(1) as f64;
    let t = (epoch * steps + step) as f64 / total;
    let (base, warmup, start, final_lr) = (base as f64, warmup as f64, start as f64, final_lr as f64);
    let lr = if t < warmup {
        base * (start + (1.0 - start) * t / warmup)
    } else {
        base + (final_lr - base) * (t - warmup) / (1.0 - warmup).max(1e-12)
    };
    lr as f32
}

/// The rate of epoch `epoch` (at its first step, for `one_cycle`).
pub fn lr_at(schedule: &Schedule, base: f32, epoch: usize, epochs: usize) -> f32 {
    match *schedule {
        Schedule::OneCycle { .. } => lr_at_step(schedule, base, epoch, epochs, 0, 1),
        Schedule::Constant => base,
        Schedule::Step { every, factor } => base * factor.powi((epoch / every) as i32),
        Schedule::Tunable { warmup, halve_every, halve_until, late_halve_every } => {
            // Seed B's rule, replayed from epoch 0 (it updates the rate in place each epoch).
            let mut lr = base as f64;
            for e in 1..=epoch {
                if e < warmup {
                    lr += lr / e as f64;
                } else if halve_until.is_none_or(|u| e <= u) {
                    if halve_every.is_some_and(|k| e % k == 0 && e > warmup) {
                        lr *= 0.5;
                    }
                } else if late_halve_every.is_some_and(|k| e % k == 0) {
                    lr *= 0.5;
                }
            }
            lr as f32
        }
        Schedule::Cosine { min_lr, warmup } => {
            if epoch < warmup {
                return base * (epoch + 1) as f32 / (warmup + 1) as f32;
            }
            let span = epochs.saturating_sub(warmup).max(1) as f64;
            let t = (epoch - warmup) as f64 / span;
            let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
            (min_lr as f64 + (base - min_lr) as f64 * cos) as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cycle_rises_then_falls_step_by_step() {
        let s = Schedule::OneCycle { warmup: 0.25, start: 0.1, final_lr: 0.0 };
        // 2 epochs of 10 steps: warm-up over steps 0-4, then down to 0 at step 20.
        let at = |e, k| lr_at_step(&s, 1.0, e, 2, k, 10);
        assert!((at(0, 0) - 0.1).abs() < 1e-7);
        assert!((at(0, 5) - 1.0).abs() < 1e-7);
        assert!((at(1, 5) - 1.0 / 3.0).abs() < 1e-6);
        assert!(at(1, 9) > 0.0 && at(1, 9) < 0.07);
        // Every other schedule is per epoch.
        let c = Schedule::Cosine { min_lr: 0.0, warmup: 0 };
        assert_eq!(lr_at_step(&c, 1.0, 3, 10, 7, 100), lr_at(&c, 1.0, 3, 10));
    }

    #[test]
    fn seed_b_tunable_schedule_matches_the_seed_code() {
        // cnn4: e=0: lr0; 1<=e<5: lr += lr/e; e%5==0, e!=5, e<=20: halve; e>20, e%3==0: halve.
        let s = Schedule::Tunable { warmup: 5, halve_every: Some(5), halve_until: Some(20), late_halve_every: Some(3) };
        let mut lr = 0.001f64;
        for e in 0..60 {
            if (1..5).contains(&e) {
                lr += lr / e as f64;
            } else if e % 5 == 0 && e != 5 && e != 0 && e <= 20 || e > 20 && e % 3 == 0 {
                lr /= 2.0;
            }
            let got = lr_at(&s, 0.001, e, 150) as f64;
            assert!((got - lr).abs() <= 1e-6 * lr, "epoch {e}: {got} vs {lr}");
        }
        for (e, want) in [(4, 0.005), (9, 0.005), (10, 0.0025), (20, 0.000625), (21, 0.0003125), (24, 0.00015625)] {
            assert!((lr_at(&s, 0.001, e, 150) - want).abs() < 1e-9, "epoch {e}");
        }
    }

    #[test]
    fn step_and_cosine() {
        let s = Schedule::Step { every: 3, factor: 0.5 };
        assert_eq!(lr_at(&s, 1.0, 2, 10), 1.0);
        assert_eq!(lr_at(&s, 1.0, 3, 10), 0.5);
        assert_eq!(lr_at(&s, 1.0, 7, 10), 0.25);
        let c = Schedule::Cosine { min_lr: 0.0, warmup: 0 };
        assert_eq!(lr_at(&c, 1.0, 0, 10), 1.0);
        assert!((lr_at(&c, 1.0, 5, 10) - 0.5).abs() < 1e-6);
        assert!(lr_at(&c, 1.0, 9, 10) < 0.03);
    }
}
