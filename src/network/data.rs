//! The data set on the device: resident (image bytes packed four to a u32, in as many
//! buffers as the device's per-buffer limit needs) or streamed from host memory through a
//! window that training fills as it reaches each stretch of an epoch.

use crate::backend::{Backend, Gather};
use crate::error::{Error, Result};

/// Images `first..first + count` of a data set, in one device buffer.
pub struct Shard<B: Backend> {
    pub images: B::IBuf,
    pub first: usize,
    pub count: usize,
}

/// The data set on the device: image bytes (packed four to a u32, in as many buffers as the
/// device's per-buffer limit needs), labels, and the identity order used for evaluation; or,
/// streamed, a window that training fills as it reaches each stretch of an epoch.
pub struct DeviceData<B: Backend> {
    pub shards: Vec<Shard<B>>,
    pub labels: B::IBuf,
    /// The labels on the host too (for an array's ensemble, counted on the host); a streamed
    /// set keeps them in its stream.
    resident_labels: Vec<u32>,
    pub order: B::IBuf,
    pub len: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub stream: Option<Stream<B>>,
}

/// A data set kept in host memory, for one too large for the device: before a stretch of
/// steps the examples they will read (in the epoch's order) are copied to a window on the
/// device, in the same command stream as the steps (an upload is ordered after the work
/// recorded before it and does not wait for it), and the steps gather from the window.
pub struct Stream<B: Backend> {
    images: Vec<u8>,
    labels: Vec<u32>,
    window: Shard<B>,
    window_labels: B::IBuf,
    window_order: B::IBuf,
    /// Examples the window holds.
    pub capacity: usize,
    /// Permutation positions staged: start..start + len.
    staged: (usize, usize),
}

/// Bytes packed four to a u32, little-endian (the last word zero-padded): how images sit in
/// device buffers.
pub fn pack(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks(4).map(|c| c.iter().enumerate().fold(0u32, |w, (i, &byte)| w | (byte as u32) << (8 * i))).collect()
}

impl<B: Backend> DeviceData<B> {
    /// Every example's label, in data-set order.
    pub fn host_labels(&self) -> &[u32] {
        match &self.stream {
            Some(st) => &st.labels,
            None => &self.resident_labels,
        }
    }

    /// Uploads a data set once; training then only uploads a permutation per epoch. A data
    /// set larger than one buffer may be (128 MB per storage binding on many GPUs) is split
    /// into shards of whole images, each gathered from separately.
    pub fn upload(b: &mut B, ds: &crate::data::Dataset) -> Result<Self> {
        let max_words = b.max_buffer_len();
        let image_len = ds.image_len().max(1);
        let per_shard = (max_words.saturating_mul(4) / image_len).min(ds.len().max(1));
        if per_shard == 0 {
            return Err(Error::Data(format!(
                "one image ({} bytes) exceeds this device's {} MB per buffer",
                image_len,
                (max_words * 4) >> 20
            )));
        }
        if ds.len() > max_words {
            return Err(Error::Data(format!(
                "the data set's {} labels exceed this device's {} MB per buffer; use --limit",
                ds.len(),
                (max_words * 4) >> 20
            )));
        }
        let mut shards = Vec::new();
        let mut first = 0;
        while first < ds.len() || shards.is_empty() {
            let count = per_shard.min(ds.len() - first);
            let packed = pack(&ds.images[first * image_len..(first + count) * image_len]);
            let mut images = b.alloc_u32(packed.len().max(1))?;
            b.upload_u32(&mut images, &packed)?;
            shards.push(Shard { images, first, count });
            first += count;
        }
        let mut labels = b.alloc_u32(ds.len().max(1))?;
        b.upload_u32(&mut labels, &ds.labels)?;
        let mut order = b.alloc_u32(ds.len().max(1))?;
        b.upload_u32(&mut order, &(0..ds.len() as u32).collect::<Vec<_>>())?;
        Ok(DeviceData {
            shards,
            labels,
            resident_labels: ds.labels.clone(),
            order,
            len: ds.len(),
            channels: ds.channels,
            height: ds.height,
            width: ds.width,
            stream: None,
        })
    }

    /// A data set streamed from host memory through a window of `capacity` examples (at
    /// least one batch; see `Stream`). The stream keeps the data set's bytes: it is taken,
    /// not copied, since a set too large for the device may be most of the host's memory.
    pub fn upload_streamed(b: &mut B, ds: crate::data::Dataset, capacity: usize) -> Result<Self> {
        let image_len = ds.image_len().max(1);
        let capacity = capacity.clamp(1, ds.len().max(1));
        if (capacity * image_len).div_ceil(4) > b.max_buffer_len() {
            return Err(Error::Data(format!(
                "a streaming window of {capacity} pictures of {image_len} bytes exceeds this device's {} MB per buffer; use a smaller --batch",
                (b.max_buffer_len() * 4) >> 20
            )));
        }
        let window = Shard { images: b.alloc_u32((capacity * image_len).div_ceil(4))?, first: 0, count: 0 };
        let window_labels = b.alloc_u32(capacity)?;
        let mut window_order = b.alloc_u32(capacity)?;
        b.upload_u32(&mut window_order, &(0..capacity as u32).collect::<Vec<_>>())?;
        let (labels, order) = (b.alloc_u32(1)?, b.alloc_u32(1)?);
        let (len, channels, height, width) = (ds.len(), ds.channels, ds.height, ds.width);
        let stream = Stream {
            images: ds.images,
            labels: ds.labels,
            window,
            window_labels,
            window_order,
            capacity,
            staged: (0, 0),
        };
        Ok(DeviceData {
            shards: Vec::new(),
            labels,
            resident_labels: Vec::new(),
            order,
            len,
            channels,
            height,
            width,
            stream: Some(stream),
        })
    }

    /// Streamed data: copies the examples at permutation positions `start..start + count`
    /// (`perm` on the host) to the window, in that order. Resident data: nothing to do.
    pub fn stage(&mut self, b: &mut B, perm: &[u32], start: usize, count: usize) -> Result<()> {
        let Some(st) = self.stream.as_mut() else { return Ok(()) };
        let count = count.min(st.capacity);
        let image_len = self.channels * self.height * self.width;
        let mut bytes = Vec::with_capacity(count * image_len);
        let mut labels = Vec::with_capacity(count);
        for &idx in &perm[start..start + count] {
            let idx = idx as usize;
            bytes.extend_from_slice(&st.images[idx * image_len..(idx + 1) * image_len]);
            labels.push(st.labels[idx]);
        }
        b.upload_u32(&mut st.window.images, &pack(&bytes))?;
        b.upload_u32(&mut st.window_labels, &labels)?;
        st.window.count = count;
        st.staged = (start, count);
        Ok(())
    }

    /// Gathers examples `perm[g.start..g.start + g.n]` into `x` and `y`, from every shard (or,
    /// streamed, from the window, which `stage` must have filled with those positions).
    pub fn gather(&self, b: &mut B, x: &mut B::Buf, y: &mut B::IBuf, perm: &B::IBuf, g: &Gather) {
        if let Some(st) = &self.stream {
            let (from, len) = st.staged;
            debug_assert!(g.start >= from && g.start + g.n <= from + len, "gather outside the staged window");
            let g = Gather { start: g.start - from, first: 0, count: len, ..*g };
            b.gather_batch(x, y, &st.window.images, &st.window_labels, &st.window_order, &g);
            return;
        }
        for s in &self.shards {
            let g = Gather { first: s.first, count: s.count, ..*g };
            b.gather_batch(x, y, &s.images, &self.labels, perm, &g);
        }
    }
}
