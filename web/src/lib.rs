//! gpu-train in a browser: the same trainer, network and WGSL kernels as the command line, on
//! the visitor's GPU through WebGPU. `session` holds what the page does; this file binds it
//! to JavaScript (`web/app.js`). Results cross as JSON strings and byte arrays.
//!
//! One session per page. Each call takes it for its duration (a call made while another is
//! running is refused with "busy"), so the page drives training a chunk of steps at a time
//! and stays free to draw, pause or predict between chunks.

pub mod session;

#[cfg(target_arch = "wasm32")]
mod bind {
    use std::cell::RefCell;

    use gpu_train::gpu::GpuBackend;
    use wasm_bindgen::prelude::*;

    use crate::session::{RunOptions, Session};

    enum Slot {
        Closed,
        Busy,
        Open(Box<Session>),
    }

    thread_local! {
        static SESSION: RefCell<Slot> = const { RefCell::new(Slot::Closed) };
    }

    fn take() -> Result<Box<Session>, JsValue> {
        SESSION.with(|s| {
            let mut slot = s.borrow_mut();
            match std::mem::replace(&mut *slot, Slot::Busy) {
                Slot::Open(session) => Ok(session),
                Slot::Busy => Err(JsValue::from_str("busy: another call is still running")),
                Slot::Closed => {
                    *slot = Slot::Closed;
                    Err(JsValue::from_str("the GPU is not open yet (call open first)"))
                }
            }
        })
    }

    fn put(session: Box<Session>) {
        SESSION.with(|s| *s.borrow_mut() = Slot::Open(session));
    }

    fn js(e: impl std::fmt::Display) -> JsValue {
        JsValue::from_str(&e.to_string())
    }

    /// A run's options from the page's JSON (`session::RunOptions`).
    fn run_options(options: &str) -> Result<RunOptions, JsValue> {
        serde_json::from_str(options).map_err(|e| js(format!("bad options: {e}")))
    }

    fn json(v: impl serde::Serialize) -> Result<String, JsValue> {
        serde_json::to_string(&v).map_err(js)
    }

    /// Opens the browser's WebGPU adapter and builds every kernel. Returns
    /// `{adapter, kernels, compile_seconds, max_buffer_mb}`.
    #[wasm_bindgen]
    pub async fn open() -> Result<String, JsValue> {
        console_error_panic_hook::set_once();
        if let Ok(s) = take() {
            let r = json(serde_json::json!({ "adapter": s.adapter() }));
            put(s);
            return r;
        }
        gpu_train::progress::watch(true);
        let mut gpu = GpuBackend::browser().await.map_err(js)?;
        let seconds = gpu.compile_all().map_err(js)?;
        let max_buffer = gpu_train::backend::Backend::max_buffer_len(&gpu) * 4;
        let s = Session::new(gpu);
        let r = json(serde_json::json!({
            "adapter": s.adapter(),
            "kernels": gpu_train::gpu::shaders::KERNELS.len(),
            "compile_seconds": seconds,
            "max_buffer_mb": max_buffer >> 20,
        }));
        put(Box::new(s));
        r
    }

    /// Every preset as `[{name, text}]`.
    #[wasm_bindgen]
    pub fn presets() -> Result<String, JsValue> {
        json(
            Session::presets()
                .into_iter()
                .map(|(name, text)| serde_json::json!({ "name": name, "text": text }))
                .collect::<Vec<_>>(),
        )
    }

    /// MNIST-style data from its four IDX files (raw or gzip): train images, train labels,
    /// test images, test labels. Returns a line describing it.
    #[wasm_bindgen]
    pub fn load_idx(
        name: &str,
        train_images: &[u8],
        train_labels: &[u8],
        test_images: &[u8],
        test_labels: &[u8],
        digits: bool,
    ) -> Result<String, JsValue> {
        let mut s = take()?;
        let r = s.load_idx(name, [train_images, train_labels, test_images, test_labels], digits);
        put(s);
        r.map_err(js)
    }

    /// A folder of pictures: each file's path relative to the chosen folder, and its bytes.
    #[wasm_bindgen]
    pub fn load_files(name: &str, paths: Vec<String>, contents: js_sys::Array) -> Result<String, JsValue> {
        if paths.len() != contents.length() as usize {
            return Err(js(format!("{} paths but {} files", paths.len(), contents.length())));
        }
        let files: Vec<(String, Vec<u8>)> =
            paths.into_iter().zip(contents.iter()).map(|(p, c)| (p, js_sys::Uint8Array::new(&c).to_vec())).collect();
        let mut s = take()?;
        let r = s.load_files(name, files);
        put(s);
        r.map_err(js)
    }

    /// Starts a run; `options` is JSON (`session::RunOptions`). Returns the lines to show.
    #[wasm_bindgen]
    pub async fn start(options: String) -> Result<String, JsValue> {
        let o = run_options(&options)?;
        let mut s = take()?;
        let r = s.start(&o).await;
        put(s);
        json(r.map_err(js)?)
    }

    /// The time per epoch of the model `options` asks for (JSON, `session::RunOptions`) on this
    /// adapter, measured on a few steps: `session::Estimate` as JSON.
    #[wasm_bindgen]
    pub async fn estimate(options: String) -> Result<String, JsValue> {
        let o = run_options(&options)?;
        let mut s = take()?;
        let r = s.estimate(&o).await;
        put(s);
        json(r.map_err(js)?)
    }

    /// How far the call running now has got (`gpu_train::progress::Progress` as JSON, or
    /// "null"): read without the session, so the page can ask while a call holds it.
    #[wasm_bindgen]
    pub fn progress() -> String {
        serde_json::to_string(&gpu_train::progress::get()).unwrap_or_else(|_| "null".into())
    }

    /// The next chunk of steps; returns its `session::StepReport` as JSON.
    #[wasm_bindgen]
    pub async fn step() -> Result<String, JsValue> {
        let mut s = take()?;
        let r = s.step().await;
        put(s);
        json(r.map_err(js)?)
    }

    /// Ends the run now and keeps its model; returns `session::Finished` as JSON.
    #[wasm_bindgen]
    pub async fn finish() -> Result<String, JsValue> {
        let mut s = take()?;
        let r = s.finish().await;
        put(s);
        json(r.map_err(js)?)
    }

    /// Whether a run is in progress.
    #[wasm_bindgen]
    pub fn running() -> bool {
        match take() {
            Ok(s) => {
                let r = s.running();
                put(s);
                r
            }
            Err(_) => false,
        }
    }

    /// The run's curves as `[loss_svg, accuracy_svg]`.
    #[wasm_bindgen]
    pub fn charts(width: u32, height: u32) -> Result<String, JsValue> {
        let s = take()?;
        let r = s.charts(width, height);
        put(s);
        json(r.map_err(js)?)
    }

    /// The top three classes for an RGBA picture, as `[{class, name, probability}]`.
    #[wasm_bindgen]
    pub async fn predict(rgba: Vec<u8>, width: usize, height: usize) -> Result<String, JsValue> {
        let mut s = take()?;
        let r = s.predict(&rgba, width, height, 3).await;
        put(s);
        json(r.map_err(js)?)
    }

    /// The model's file name and bytes (safetensors), to download.
    #[wasm_bindgen]
    pub async fn model_file() -> Result<js_sys::Array, JsValue> {
        let mut s = take()?;
        let r = s.model_bytes().await;
        put(s);
        let (name, bytes) = r.map_err(js)?;
        let out = js_sys::Array::new();
        out.push(&JsValue::from_str(&name));
        out.push(&js_sys::Uint8Array::from(bytes.as_slice()));
        Ok(out)
    }

    /// A model file (safetensors, as `gpu-train` saves them) to predict with, test or train on.
    #[wasm_bindgen]
    pub fn load_model(bytes: Vec<u8>, name: &str) -> Result<String, JsValue> {
        let mut s = take()?;
        let r = s.load_model(bytes, name);
        put(s);
        r.map_err(js)
    }

    /// The model's figures on the loaded data's test split: `{accuracy, loss, count}`.
    #[wasm_bindgen]
    pub async fn evaluate() -> Result<String, JsValue> {
        let mut s = take()?;
        let r = s.evaluate().await;
        put(s);
        let (accuracy, loss, count) = r.map_err(js)?;
        json(serde_json::json!({ "accuracy": accuracy, "loss": loss, "count": count }))
    }

    /// Every kernel against the f64 reference on small awkward shapes (as `gpu-train
    /// selftest`), on this browser's WebGPU: `{passed, failed, lines}`.
    #[wasm_bindgen]
    pub async fn selftest(filter: String) -> Result<String, JsValue> {
        let mut s = take()?;
        let results = gpu_train::selftest::run(Some(&mut s.gpu), &filter).await;
        put(s);
        let failed = results.iter().filter(|r| !r.passed()).count();
        json(serde_json::json!({
            "passed": results.len() - failed,
            "failed": failed,
            "lines": results.iter().map(|r| r.line()).collect::<Vec<_>>(),
        }))
    }
}
