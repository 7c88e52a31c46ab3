//! What fits before anything is allocated: host memory for a model or an array, and the
//! device's per-buffer limit for every buffer a network allocates.

use super::{Members, plan};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::Arch;

/// Fails, before anything is allocated, when a model with batches of up to `cap` examples
/// cannot fit: its parameters with their gradients, optimizer state and average (and a host
/// copy), and, on a backend in host memory, every activation and gradient buffer of a batch,
/// against the host's available memory. (A GPU's per-buffer limit is checked by
/// `Network::new`; its total memory is not something wgpu reports, and running out of it is
/// reported by wgpu as one error.)
pub fn check_fits<B: Backend>(b: &B, arch: &Arch, cap: usize) -> Result<()> {
    // Parameters: values, gradients, Adam's two moments and an average in the backend's
    // buffers, and the host copies made at initialisation and saving: at most seven copies on
    // the host with a CPU backend, three with a GPU.
    let copies = if b.allocates_on_host() { 7 } else { 3 };
    let params = 4 * copies * (arch.n_params as u64 + arch.n_state as u64);
    crate::memory::check_host(
        &format!("the model's {} parameters with their gradients and optimizer state", arch.param_count()),
        params,
        "use fewer filters or units",
    )?;
    if b.allocates_on_host() {
        // The activation buffers both plans use, and the backward's gradient slots.
        let (train, eval) = (plan::plan(arch, true), plan::plan(arch, false));
        let used: std::collections::BTreeSet<usize> = train.buffers().chain(eval.buffers()).collect();
        let per_example: u64 = used.iter().map(|&k| arch.shapes[k].len() as u64).sum::<u64>()
            + plan::backward(arch, &train).slots.iter().map(|&n| n as u64).sum::<u64>();
        let (widest, at) = arch.shapes.iter().enumerate().map(|(i, s)| (s.len(), i)).max().unwrap_or((0, 0));
        crate::memory::check_host(
            &format!(
                "the activations of a batch of {cap} ({} values per example; the widest, {}, {})",
                per_example,
                arch.boundary_name(at),
                arch.shapes[at]
            ),
            4 * per_example.saturating_mul(cap as u64) + params,
            &format!(
                "use a smaller --batch or fewer filters (the widest layer alone holds {widest} values per example)"
            ),
        )?;
    }
    Ok(())
}

/// `check_fits` and the device's per-buffer limit for `members` as one network; for an array
/// that does not fit, the error names the most members that would.
pub fn check_array<B: Backend>(b: &B, members: &Members, cap: usize) -> Result<()> {
    let r = check_fits(b, &members.fused, cap).and_then(|_| fits_buffers(b, &members.fused, cap));
    let k = members.len();
    match r {
        Err(Error::Memory(m)) if k > 1 => Err(Error::Memory(format!("{m}{}", largest_note(b, members, cap)))),
        Err(Error::Config(m)) if k > 1 => Err(Error::Config(format!("{m}{}", largest_note(b, members, cap)))),
        r => r,
    }
}

fn largest_note<B: Backend>(b: &B, members: &Members, cap: usize) -> String {
    let k = largest_array(b, &members.lone.spec, cap, members.len() - 1);
    format!(
        " (an array of {} models of {}; at most {k} fit here: use fewer --seeds or --sweep values)",
        members.len(),
        members.lone.name()
    )
}

/// The most members of `spec` that fit with batches of up to `cap` (see `check_fits`), or 0
/// when not even one does: what an error about an array too large names.
pub fn largest_array<B: Backend>(b: &B, spec: &crate::model::ModelSpec, cap: usize, upto: usize) -> usize {
    let fits = |k: usize| {
        Arch::fused(spec.clone(), k).is_ok_and(|a| check_fits(b, &a, cap).is_ok() && fits_buffers(b, &a, cap).is_ok())
    };
    let (mut lo, mut hi) = (0, upto);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) { lo = mid } else { hi = mid - 1 }
    }
    lo
}

/// Checks the device's per-buffer limit against every buffer a network of `arch` with
/// batches of `cap` allocates, before allocating any.
fn fits_buffers<B: Backend>(b: &B, arch: &Arch, cap: usize) -> Result<()> {
    let max = b.max_buffer_len();
    let (train, eval) = (plan::plan(arch, true), plan::plan(arch, false));
    for k in train.buffers().chain(eval.buffers()) {
        let len = cap.saturating_mul(arch.shapes[k].len());
        if len > max {
            return Err(Error::Config(format!(
                "batch {cap} needs {} MB for the activations {} ({} per example), more than the {} MB this device \
                 allows per buffer; use a smaller --batch (at most {})",
                (len * 4) >> 20,
                arch.boundary_name(k),
                arch.shapes[k],
                (max * 4) >> 20,
                max / arch.shapes[k].len()
            )));
        }
    }
    if arch.n_params > max {
        return Err(Error::Config(format!(
            "the model's {} parameters exceed this device's {} MB per buffer",
            arch.n_params,
            (max * 4) >> 20
        )));
    }
    Ok(())
}
