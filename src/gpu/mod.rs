//! The GPU backend: WGSL compute shaders run by wgpu (Vulkan, Metal, DX12, GL).
//!
//! Built for many training steps per submit: ops only record dispatches into one open
//! compute pass; each dispatch's small parameter block is appended to a host-side arena that
//! is written to one uniform buffer just before the submit and bound with a dynamic offset,
//! so nothing is allocated per step. Pipelines and bind groups are made once (bind groups
//! are cached by the buffers they bind). Nothing is read back until `download`. The GEMM
//! kernels come in tile shapes (`variants`): pipelines are per (entry, shape), the default
//! shape's built by `compile_all` or on first use, the others on first use.

pub mod coop;
pub mod device;
pub mod kernels;
mod ops;
pub mod shaders;
pub mod tune;
pub mod variants;

pub use variants::{Choice, GemmOp, KERNEL_SET_VERSION, OpKey, Tile, candidates, default_choice};

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use web_time::Instant;

use bytemuck::Pod;

use crate::error::{Error, Result};
use shaders::{DEFAULT_TILE, TileShape};

/// A device buffer (of f32 or u32 elements, 4 bytes each).
#[derive(Debug)]
pub struct GpuBuf {
    buf: wgpu::Buffer,
    len: usize,
    id: u64,
    /// The backend's memory count, given back on drop (None for borrowed handles).
    mem: Option<Arc<MemoryCount>>,
}

impl Drop for GpuBuf {
    fn drop(&mut self) {
        if let Some(m) = &self.mem {
            m.add(-(self.buf.size() as i64));
        }
    }
}

/// Bytes of device memory the backend holds, now and at most.
#[derive(Debug, Default)]
pub struct MemoryCount {
    current: AtomicI64,
    peak: AtomicI64,
}

impl MemoryCount {
    fn add(&self, bytes: i64) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
}

impl GpuBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    /// A second handle to the same buffer, to record dispatches with (it does not count
    /// towards the backend's memory).
    fn handle(&self) -> GpuBuf {
        GpuBuf { buf: self.buf.clone(), len: self.len, id: self.id, mem: None }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Size of one dispatch's parameter slot in the arena (the largest dynamic-offset alignment
/// WebGPU allows, and more than any kernel's parameter struct): the launcher's struct, then
/// zeros. The bind group binds this many bytes, so every WGSL `Params` must fit in it.
pub const SLOT: usize = 256;
/// Parameter slots per submit before the backend flushes on its own.
const ARENA_SLOTS: usize = 8192;
/// The most storage bindings a kernel has (the bind-group cache's key holds one buffer id
/// each; a kernel with more is refused rather than cached under a shorter key).
const MAX_BINDINGS: usize = 8;

/// Per-kernel GPU time from timestamp queries (`bench --profile`, the page's `profile=1`).
pub struct Profiler {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    capacity: u32,
    /// Kernel (and tile shape) of each pair of queries recorded since the last resolve.
    pending: Vec<(&'static str, TileShape)>,
    /// Nanoseconds and dispatch count per kernel and tile shape.
    totals: HashMap<(&'static str, TileShape), (f64, u64)>,
    period_ns: f32,
    /// Dispatches left untimed because every query was in use (in a browser, where timings
    /// are read only when the page awaits `read_profile`).
    untimed: u64,
}

impl Profiler {
    /// Every query holds a timing not yet read.
    fn full(&self) -> bool {
        2 * self.pending.len() as u32 >= self.capacity
    }
}

pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    // The pass borrows the encoder's recording: declared first so it is dropped first.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    /// Per (family, tile shape); families without a tile only under the default shape.
    modules: HashMap<(&'static str, TileShape), wgpu::ShaderModule>,
    pipelines: HashMap<(&'static str, TileShape), wgpu::ComputePipeline>,
    /// Group 0 of each entry point, shared by its tile shapes (so are its bind groups).
    layouts: HashMap<&'static str, wgpu::BindGroupLayout>,
    params_group: wgpu::BindGroup,
    params_layout: wgpu::BindGroupLayout,
    arena_buf: wgpu::Buffer,
    arena: Vec<u8>,
    groups: HashMap<(&'static str, [u64; MAX_BINDINGS]), wgpu::BindGroup>,
    next_id: u64,
    scratch: Option<GpuBuf>,
    /// Bound at the member-table binding of kernels that do not read it this time (the
    /// backward GEMMs share a module with the forward's dropout epilogue).
    no_table: GpuBuf,
    staging: Option<wgpu::Buffer>,
    /// Largest workgroup count per grid dimension the launchers use (the adapter's limit;
    /// tests lower it to exercise the folding of large grids into two dimensions).
    pub max_groups: u32,
    errors: Arc<Mutex<Vec<String>>>,
    /// Seconds spent building shader modules and pipelines.
    pub compile_seconds: f64,
    /// Dispatches recorded, and host seconds spent recording and submitting them (building
    /// pipelines excluded): what a step costs the CPU, apart from the GPU's own time.
    pub dispatches: u64,
    pub host_seconds: f64,
    profiler: Option<Profiler>,
    memory: Arc<MemoryCount>,
    /// `--precision mixed`: the configuration the dense GEMMs run on (src/gpu/coop.rs).
    coop: Option<coop::CoopConfig>,
    /// The GEMM variant chosen per op shape, and the ops recorded for tuning (`variants`).
    variants: variants::Variants,
}

/// The group-0 layout of a kernel's storage bindings (binding, access), for compute.
pub(crate) fn storage_layout(bindings: &[(u32, shaders::Access)]) -> Vec<wgpu::BindGroupLayoutEntry> {
    bindings
        .iter()
        .map(|&(binding, access)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: access == shaders::Access::Read },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect()
}

impl GpuBackend {
    /// Opens adapter `index` (see `gpu-train devices`), or the best one.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(index: Option<usize>) -> Result<Self> {
        let adapter = device::pick(index)?;
        Self::from_adapter(&adapter)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Result<Self> {
        pollster::block_on(Self::open(adapter, wgpu::Features::empty()))
    }

    /// The browser's WebGPU adapter (a page's only way in: it cannot enumerate adapters).
    pub async fn browser() -> Result<Self> {
        let adapter = device::instance_for(wgpu::Backends::BROWSER_WEBGPU)
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Gpu(format!("this browser offers no WebGPU adapter: {e}")))?;
        Self::open(&adapter, wgpu::Features::empty()).await
    }

    /// The adapter opened with `extra` features too (which it must offer).
    async fn open(adapter: &wgpu::Adapter, extra: wgpu::Features) -> Result<Self> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = (adapter.features() & wgpu::Features::TIMESTAMP_QUERY) | extra;
        let experimental = if extra.intersects(wgpu::Features::all_experimental_mask()) {
            // SAFETY: the one experimental feature asked for is cooperative matrices
            // (`open_mixed`), used only by shaders/coop_gemm.wgsl, whose coop loads and
            // stores all address whole matrices inside workgroup tiles it sizes itself.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("gpu-train"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: experimental,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Gpu(format!("cannot open {}: {e}", info.name)))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(": "));
            }
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut v) = sink.lock() {
                v.push(format!("the device was lost ({reason:?}): {msg}"));
            }
        });
        let params_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("params"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: None,
                },
                count: None,
            }],
        });
        let arena_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params arena"),
            size: (SLOT * ARENA_SLOTS) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let params_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("params"),
            layout: &params_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &arena_buf,
                    offset: 0,
                    size: wgpu::BufferSize::new(SLOT as u64),
                }),
            }],
        });
        let no_table = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("no member table"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(GpuBackend {
            max_groups: limits.max_compute_workgroups_per_dimension.min(65_535),
            device,
            queue,
            info,
            limits,
            pass: None,
            encoder: None,
            modules: HashMap::new(),
            pipelines: HashMap::new(),
            layouts: HashMap::new(),
            params_group,
            params_layout,
            arena_buf,
            arena: Vec::with_capacity(SLOT * 64),
            groups: HashMap::new(),
            next_id: 1,
            scratch: None,
            no_table: GpuBuf { buf: no_table, len: 4, id: 0, mem: None },
            staging: None,
            errors,
            compile_seconds: 0.0,
            dispatches: 0,
            host_seconds: 0.0,
            profiler: None,
            memory: {
                let m = Arc::new(MemoryCount::default());
                m.add((SLOT * ARENA_SLOTS) as i64);
                m
            },
            coop: None,
            variants: variants::Variants::default(),
        })
    }

    /// Device memory in buffers this backend made: (now, peak), in bytes.
    pub fn memory(&self) -> (u64, u64) {
        (self.memory.current.load(Ordering::Relaxed) as u64, self.memory.peak.load(Ordering::Relaxed) as u64)
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    pub fn is_software(&self) -> bool {
        device::is_software(&self.info)
    }

    /// Builds every pipeline now (otherwise each is built on first use); returns the seconds.
    pub fn compile_all(&mut self) -> Result<f64> {
        let t = Instant::now();
        for k in shaders::KERNELS {
            self.pipeline(k.entry, DEFAULT_TILE);
        }
        self.check_errors()?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// Builds `entry`'s pipeline in tile shape `shape` (the default for families without a
    /// tile) unless there is one; what goes wrong is noted for the next check.
    fn pipeline(&mut self, entry: &'static str, shape: TileShape) {
        if self.pipelines.contains_key(&(entry, shape)) {
            return;
        }
        let t = Instant::now();
        let Some(kernel) = shaders::kernel(entry) else {
            self.fail(format!("no kernel named {entry}"));
            return;
        };
        let module_key = (kernel.family, shape);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        if !self.modules.contains_key(&module_key) {
            let source = shaders::module_source_from_env(kernel.family, shape).unwrap_or_default();
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(kernel.family),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            };
            let module = if std::env::var_os("GPU_TRAIN_UNCHECKED_SHADERS").is_some() {
                // Measurement only: without the bounds checks wgpu adds to every array
                // access. Every index our kernels compute is guarded by its own size test,
                // which the GPU tests exercise; this switch is what measures their cost.
                unsafe { self.device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
            } else {
                self.device.create_shader_module(desc)
            };
            self.modules.insert(module_key, module);
        }
        if !self.layouts.contains_key(entry) {
            let entries = storage_layout(kernel.bindings);
            let layout = self
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(entry), entries: &entries });
            self.layouts.insert(entry, layout);
        }
        let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry),
            bind_group_layouts: &[Some(&self.layouts[entry]), Some(&self.params_layout)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pipeline_layout),
            module: &self.modules[&module_key],
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let what =
            if shape == DEFAULT_TILE { String::new() } else { format!(" (tile {}x{})", 4 * shape.ty, 4 * shape.tx) };
        self.report_scope(scope, format!("kernel {entry}{what} does not build"));
        self.pipelines.insert((entry, shape), pipeline);
        self.compile_seconds += t.elapsed().as_secs_f64();
    }

    /// Records what an error scope caught, prefixed by `what`: natively at once; in a browser
    /// when the scope's promise settles (an error then shows at the next check).
    fn report_scope(&self, scope: wgpu::ErrorScopeGuard, what: String) {
        let errors = self.errors.clone();
        let record = move |e: Option<wgpu::Error>| {
            if let (Some(e), Ok(mut v)) = (e, errors.lock()) {
                v.push(format!("{what}: {e}"));
            }
        };
        // The pop takes effect now; its result comes later.
        let popped = scope.pop();
        #[cfg(not(target_arch = "wasm32"))]
        record(pollster::block_on(popped));
        #[cfg(target_arch = "wasm32")]
        wasm_bindgen_futures::spawn_local(async move { record(popped.await) });
    }

    fn fail(&self, msg: String) {
        if let Ok(mut v) = self.errors.lock() {
            v.push(msg);
        }
    }

    fn check_errors(&self) -> Result<()> {
        let mut v = self.errors.lock().map_err(|_| Error::Gpu("error state poisoned".into()))?;
        if v.is_empty() {
            return Ok(());
        }
        let msg = v.join("; ");
        v.clear();
        Err(Error::Gpu(msg))
    }

    fn new_buffer(&mut self, len: usize) -> Result<GpuBuf> {
        let bytes = (len.max(1) * 4) as u64;
        let limit = self.limits.max_buffer_size.min(self.limits.max_storage_buffer_binding_size);
        if bytes > limit {
            return Err(Error::Gpu(format!(
                "a buffer of {} MB exceeds this adapter's limit of {} MB per buffer",
                bytes >> 20,
                limit >> 20
            )));
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let id = self.next_id;
        self.next_id += 1;
        self.memory.add(bytes as i64);
        Ok(GpuBuf { buf, len, id, mem: Some(self.memory.clone()) })
    }

    /// A scratch buffer of at least `len` elements (split-K partial sums, per-row losses),
    /// grown as needed. The buffer lives in the backend; what comes back is a second handle
    /// to it, to record dispatches with.
    fn scratch(&mut self, len: usize) -> Option<GpuBuf> {
        if self.scratch.as_ref().is_none_or(|s| s.len < len) {
            match self.new_buffer(len.next_power_of_two()) {
                Ok(b) => self.scratch = Some(b),
                Err(e) => {
                    self.fail(e.to_string());
                    return None;
                }
            }
        }
        self.scratch.as_ref().map(GpuBuf::handle)
    }

    /// A handle to the placeholder bound where a kernel takes the member table but does not
    /// read it in this dispatch.
    fn no_table(&self) -> GpuBuf {
        self.no_table.handle()
    }

    /// Records one dispatch of `entry` over `groups` workgroups with `bufs` at the kernel's
    /// bindings (in order) and `params` as its uniform block.
    fn dispatch<P: Pod>(&mut self, entry: &'static str, bufs: &[&GpuBuf], params: &P, groups: [u32; 3]) {
        self.dispatch_tiled(entry, DEFAULT_TILE, bufs, params, groups)
    }

    /// `dispatch` of a GEMM kernel built in tile shape `shape`.
    fn dispatch_tiled<P: Pod>(
        &mut self,
        entry: &'static str,
        shape: TileShape,
        bufs: &[&GpuBuf],
        params: &P,
        groups: [u32; 3],
    ) {
        if groups.contains(&0) {
            return;
        }
        self.pipeline(entry, shape);
        let t = Instant::now();
        self.record(entry, shape, bufs, params, groups);
        self.dispatches += 1;
        self.host_seconds += t.elapsed().as_secs_f64();
    }

    fn record<P: Pod>(
        &mut self,
        entry: &'static str,
        shape: TileShape,
        bufs: &[&GpuBuf],
        params: &P,
        groups: [u32; 3],
    ) {
        let Some(kernel) = shaders::kernel(entry).or_else(|| coop::kernel(entry)) else { return };
        if bufs.len() != kernel.bindings.len() {
            self.fail(format!("{entry}: {} buffers for {} bindings", bufs.len(), kernel.bindings.len()));
            return;
        }
        if bufs.len() > MAX_BINDINGS {
            self.fail(format!(
                "{entry}: {} bindings, more than the {MAX_BINDINGS} the bind-group cache keys",
                bufs.len()
            ));
            return;
        }
        let mut key = [0u64; MAX_BINDINGS];
        for (k, b) in key.iter_mut().zip(bufs) {
            *k = b.id;
        }
        if !self.groups.contains_key(&(entry, key)) {
            if self.groups.len() > 4096 {
                self.groups.clear();
            }
            let entries: Vec<wgpu::BindGroupEntry> = kernel
                .bindings
                .iter()
                .zip(bufs)
                .map(|(&(binding, _), b)| wgpu::BindGroupEntry { binding, resource: b.buf.as_entire_binding() })
                .collect();
            let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(entry),
                layout: &self.layouts[entry],
                entries: &entries,
            });
            self.groups.insert((entry, key), group);
        }
        // Natively a full query set is read at the next submit; a browser cannot wait there,
        // so its further dispatches go untimed until the page reads the timings.
        let force_submit = cfg!(not(target_arch = "wasm32")) && self.profiler.as_ref().is_some_and(Profiler::full);
        if self.arena.len() + SLOT > SLOT * ARENA_SLOTS || force_submit {
            // Submit what is recorded (and, when profiling, read its timings), then go on.
            if let Err(e) = self.submit_recorded() {
                self.fail(e.to_string());
                return;
            }
        }
        let offset = self.arena.len();
        self.arena.extend_from_slice(bytemuck::bytes_of(params));
        self.arena.resize(offset + SLOT, 0);

        if self.encoder.is_none() {
            self.encoder = Some(self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None }));
        }
        let profiling = match self.profiler.as_mut() {
            Some(p) if p.full() => {
                p.untimed += 1;
                false
            }
            p => p.is_some(),
        };
        if profiling {
            // One pass per dispatch, timed at its start and end.
            self.pass = None;
            let p = self.profiler.as_mut().expect("checked");
            let q = 2 * p.pending.len() as u32;
            p.pending.push((entry, shape));
            let enc = self.encoder.as_mut().expect("created above");
            self.pass = Some(
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &p.queries,
                        beginning_of_pass_write_index: Some(q),
                        end_of_pass_write_index: Some(q + 1),
                    }),
                })
                .forget_lifetime(),
            );
        } else if self.pass.is_none() {
            let enc = self.encoder.as_mut().expect("created above");
            self.pass = Some(
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None })
                    .forget_lifetime(),
            );
        }
        let pass = self.pass.as_mut().expect("begun above");
        pass.set_pipeline(&self.pipelines[&(entry, shape)]);
        pass.set_bind_group(0, &self.groups[&(entry, key)], &[]);
        pass.set_bind_group(1, &self.params_group, &[offset as u32]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        if profiling {
            self.pass = None;
        }
    }

    /// Ends the pass and submits everything recorded, with the parameter arena written first.
    fn submit(&mut self) -> Result<()> {
        let t = Instant::now();
        let r = self.submit_recorded();
        self.host_seconds += t.elapsed().as_secs_f64();
        r
    }

    fn submit_recorded(&mut self) -> Result<()> {
        self.pass = None;
        if let Some(mut enc) = self.encoder.take() {
            if let Some(p) = self.profiler.as_mut().filter(|p| !p.pending.is_empty()) {
                let n = 2 * p.pending.len() as u32;
                enc.resolve_query_set(&p.queries, 0..n, &p.resolve, 0);
                enc.copy_buffer_to_buffer(&p.resolve, 0, &p.readback, 0, n as u64 * 8);
            }
            if !self.arena.is_empty() {
                self.queue.write_buffer(&self.arena_buf, 0, &self.arena);
                self.arena.clear();
            }
            self.queue.submit([enc.finish()]);
            #[cfg(not(target_arch = "wasm32"))]
            if self.profiler.as_ref().is_some_and(|p| !p.pending.is_empty()) {
                pollster::block_on(self.read_profile())?;
            }
        }
        self.check_errors()
    }

    /// Maps `size` bytes of a read-back buffer once the GPU has written them: natively by
    /// waiting on the device, in a browser by awaiting the mapping, which the page's event
    /// loop delivers (wgpu's `poll` does nothing there). All mapping goes through here.
    async fn read_mapped(&self, buf: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let slice = buf.slice(..size);
        let (tx, rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |res| {
            let _ = tx.send(res);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        let mapped = rx.await;
        self.check_errors()?;
        match mapped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Gpu(format!("cannot read results back: {e}"))),
            Err(_) => return Err(Error::Gpu("the GPU did not finish (device lost?)".into())),
        }
        let data = slice.get_mapped_range().map_err(|e| Error::Gpu(e.to_string()))?.to_vec();
        buf.unmap();
        Ok(data)
    }

    async fn read_back(&mut self, src: &GpuBuf, len: usize) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        if len > src.len {
            return Err(Error::Gpu(format!("read of {len} elements from a buffer of {}", src.len)));
        }
        self.submit()?;
        let size = (len * 4) as u64;
        if self.staging.as_ref().is_none_or(|s| s.size() < size) {
            let old = self.staging.as_ref().map_or(0, |s| s.size());
            self.memory.add(size.next_power_of_two() as i64 - old as i64);
            self.staging = Some(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("read-back"),
                size: size.next_power_of_two(),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let staging = self.staging.as_ref().expect("made above");
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(&src.buf, 0, staging, 0, size);
        self.queue.submit([enc.finish()]);
        self.read_mapped(staging, size).await
    }

    fn write(&mut self, dst: &GpuBuf, bytes: &[u8]) -> Result<()> {
        if bytes.len() > dst.len * 4 {
            return Err(Error::Gpu(format!("write of {} elements to a buffer of {}", bytes.len() / 4, dst.len)));
        }
        // Work recorded so far must see the old contents: submit it first (writes are
        // ordered before the next submit).
        self.submit()?;
        if !bytes.is_empty() {
            self.queue.write_buffer(&dst.buf, 0, bytes);
        }
        Ok(())
    }

    /// Starts timing every dispatch (needs timestamp queries); see `profile_report`.
    pub fn enable_profiling(&mut self) -> Result<()> {
        if !self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::Gpu(format!("{} does not support timestamp queries", self.info.name)));
        }
        self.submit()?;
        let capacity = 4096u32;
        let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: capacity,
        });
        let size = capacity as u64 * 8;
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile read-back"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.profiler = Some(Profiler {
            queries,
            resolve,
            readback,
            capacity,
            pending: Vec::new(),
            totals: HashMap::new(),
            period_ns: self.queue.get_timestamp_period(),
            untimed: 0,
        });
        Ok(())
    }

    /// Adds the timings of the dispatches submitted so far to the totals. Natively every
    /// submit does this; a browser's page awaits it between chunks of steps (each submit
    /// there copies all the chunk's timings to the read-back buffer, so the last holds them).
    pub async fn read_profile(&mut self) -> Result<()> {
        if self.profiler.is_none() {
            return Ok(());
        }
        if self.encoder.is_some() {
            self.submit()?;
        }
        let Some(p) = self.profiler.as_ref().filter(|p| !p.pending.is_empty()) else { return Ok(()) };
        let n = p.pending.len();
        let bytes = self.read_mapped(&p.readback, n as u64 * 16).await?;
        let p = self.profiler.as_mut().expect("checked");
        let ticks: &[u64] = bytemuck::cast_slice(&bytes);
        for (i, name) in p.pending.drain(..).enumerate() {
            let ns = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * p.period_ns as f64;
            let e = p.totals.entry(name).or_insert((0.0, 0));
            e.0 += ns;
            e.1 += 1;
        }
        Ok(())
    }

    /// Stops timing (the timings so far kept in what it returns) until `resume_profiling`:
    /// the page's tests between epochs are left out of its training steps' profile.
    pub fn pause_profiling(&mut self) -> Option<Profiler> {
        self.profiler.take()
    }

    pub fn resume_profiling(&mut self, p: Option<Profiler>) {
        self.profiler = p;
    }

    /// Whether dispatches are being timed (`enable_profiling`).
    pub fn profiling(&self) -> bool {
        self.profiler.is_some()
    }

    /// Dispatches that went untimed (see `Profiler::untimed`).
    pub fn profile_untimed(&self) -> u64 {
        self.profiler.as_ref().map_or(0, |p| p.untimed)
    }

    /// (kernel, total seconds, dispatches) since profiling began, slowest first; a GEMM
    /// kernel in another than the default tile as "conv2d_forward t16x64".
    pub fn profile_report(&mut self) -> Result<Vec<(String, f64, u64)>> {
        self.submit()?;
        let Some(p) = self.profiler.as_ref() else { return Ok(Vec::new()) };
        let name = |&(entry, shape): &(&str, TileShape)| match shape {
            DEFAULT_TILE => entry.to_string(),
            s => format!("{entry} t{}x{}", 4 * s.ty, 4 * s.tx),
        };
        let mut v: Vec<(String, f64, u64)> = p.totals.iter().map(|(k, &(ns, c))| (name(k), ns * 1e-9, c)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(v)
    }

    /// 1-D grid for `threads` invocations of 256-thread workgroups, folded into two
    /// dimensions when it needs more than `max_groups` workgroups.
    fn grid(&self, threads: usize) -> [u32; 3] {
        let groups = threads.div_ceil(256) as u64;
        let x = groups.min(self.max_groups as u64);
        [x as u32, groups.div_ceil(x.max(1)) as u32, 1]
    }

    /// Grid of `tiles` output tiles (folded like `grid`) times `z`.
    fn tile_grid(&self, tiles: usize, z: usize) -> [u32; 3] {
        let x = (tiles as u64).min(self.max_groups as u64);
        [x as u32, (tiles as u64).div_ceil(x.max(1)) as u32, z as u32]
    }
}
