// The page: controls, the training loop (a chunk of steps per call, so the page stays live),
// the curves, the drawing pad. Everything that trains, tests and predicts is the Rust library
// compiled to WebAssembly (pkg/); this file only moves data between it and the page.
//
// URL parameters run the page without a hand on it (tests, demos, links to a set-up):
//   arch, epochs, batch, lr, limit, seed  preset and recipe overrides (fill the form)
//   kernels=tuned|default, tune_budget=S  GPU kernels per layer shape (tuned on this adapter by
//                                         default, within S seconds: 10); "KERNELS {line}"
//   profile=1                             time every kernel of the training steps (timestamp
//                                         queries): RESULT's "profile", GPU seconds per step
//                                         by kernel beside the step's time in the page
//   modelfile=URL                         a model file (.toml) to train instead of a preset
//   data=mnist | URL                      load the shipped MNIST, or the four IDX files in the
//                                         folder at URL (same server); digits=0: not digits
//   model=URL                             load a model file (training then continues it;
//                                         train=fresh trains the form's model instead)
//   evaluate=1                            test the loaded model ("EVAL {json}")
//   autostart=1                           train as soon as data is loaded (MNIST if no data=)
//   selftest=1 (&filter=...)              check every kernel against the reference first
//   estimate=1                            measure the time per epoch first ("ESTIMATE {json}";
//                                         without autostart the page does so by itself)
//   digit=D                               after training, draw D on the pad and predict it
//   post=1                                after training, POST the model and the pad's picture
//                                         to /upload/ on the page's server (tests)
// Results go to the console as one line each: "RESULT {json}", "SELFTEST {json}",
// "EVAL {json}", "ESTIMATE {json}", "ADAPTER {json}", "ERROR message"; and what the page shows
// of a run as it goes, at most about once a second: "PROGRESS {json}".

import init, * as wasm from './pkg/gpu_train_web.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let presets = [];
let running = false; // the loop is taking steps
let training = false; // a run exists (running or paused)
let lastChart = 0;

// One call into the library at a time: each takes the session for its duration. While one
// runs, `watch` shows how far it has got (the library says, between its batches).
let queue = Promise.resolve();
let inFlight = 0;
function call(f) {
  const r = queue.then(async () => {
    inFlight++;
    try { return await f(); } finally { inFlight--; }
  });
  queue = r.catch(() => {});
  return r;
}

// A duration in words: 8 s, 3 min 5 s, 1 h 12 min.
function human(s) {
  if (!Number.isFinite(s)) return '?';
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

// What the page shows of a run, also as a console line for tests (at most about one a
// second, and always the first).
let lastProgressLog = 0;
function progress(text, fields) {
  status('train-status', text);
  const now = performance.now();
  if (now - lastProgressLog > 1000 || fields.first) {
    lastProgressLog = now;
    console.log('PROGRESS ' + JSON.stringify({ ...fields, text, at: Math.round(now - (clicked || 0)) }));
  }
}
let clicked = null; // when Train was pressed (performance.now())
let software = false; // the adapter is a software one

// While a call holds the session: what it is doing, from the library, every quarter second.
setInterval(() => {
  if (!inFlight || !wasm.progress) return;
  let p = null;
  try { p = JSON.parse(wasm.progress()); } catch (e) { return; }
  if (!p || !p.total) return;
  const where = p.stage ? `${p.stage}: ` : '';
  const text = `${where}${p.what} ${p.done} of ${p.total}`;
  if (training) progress(text, { phase: p.stage || p.what, done: p.done, total: p.total });
  else status(p.stage === 'measuring the time per epoch' ? 'model-status' : 'train-status', text);
}, 250);

function status(id, text, error = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle('error', error);
}

function fail(id, e) {
  const msg = String(e && e.message ? e.message : e);
  status(id, msg, true);
  console.error('ERROR ' + msg);
}

function log(lines) {
  if (!lines || lines.length === 0) return;
  const el = $('log');
  el.textContent += lines.join('\n') + '\n';
  el.scrollTop = el.scrollHeight;
}

function setButtons() {
  const ready = opened;
  $('start').disabled = !ready || training || !haveData;
  $('pause').disabled = !training;
  $('pause').textContent = running || !training ? 'Pause' : 'Continue';
  $('stop').disabled = !training;
  $('download').disabled = !haveModel;
  $('test').disabled = !haveModel || !haveData || training;
}
let opened = false;
let haveData = false;
let haveModel = false;

// ---- data ----

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status} ${r.statusText}`);
  return new Uint8Array(await r.arrayBuffer());
}

// The four IDX files at `base` (a folder URL; raw or .gz, either spelling of the names).
// `digits`: MNIST-style digits (predictions get MNIST's preparation).
async function loadIdxUrl(base, name, digits) {
  status('data-status', `Downloading ${name}…`);
  if (!base.endsWith('/')) base += '/';
  const one = async (stem, kind) => {
    for (const sep of ['-', '.']) {
      for (const ext of ['.gz', '']) {
        const r = await fetch(`${base}${stem}${sep}${kind}${ext}`);
        if (r.ok) return new Uint8Array(await r.arrayBuffer());
      }
    }
    throw new Error(`${base}: no ${stem}-${kind}[.gz] (expected the four IDX files with the standard names)`);
  };
  const files = await Promise.all([['train-images', 'idx3-ubyte'], ['train-labels', 'idx1-ubyte'],
    ['t10k-images', 'idx3-ubyte'], ['t10k-labels', 'idx1-ubyte']].map(([s, k]) => one(s, k)));
  const line = await call(() => wasm.load_idx(name, files[0], files[1], files[2], files[3], digits));
  haveData = true;
  status('data-status', line);
  setButtons();
  if (params.get('autostart') !== '1') estimate();
}

const loadMnist = () => loadIdxUrl('data/mnist/', 'mnist', true);

const IDX = [/^train-images[-.]idx3-ubyte(\.gz)?$/, /^train-labels[-.]idx1-ubyte(\.gz)?$/,
  /^t10k-images[-.]idx3-ubyte(\.gz)?$/, /^t10k-labels[-.]idx1-ubyte(\.gz)?$/];

// files: [{path, file}] with paths relative to the chosen folder's parent.
async function loadFolder(files) {
  const name = (files[0] && files[0].path.split('/')[0]) || 'folder';
  const base = (p) => p.split('/').pop();
  const idx = IDX.map((re) => files.find((f) => re.test(base(f.path))));
  status('data-status', `Reading ${files.length} files…`);
  if (idx.every((f) => f)) {
    const bytes = await Promise.all(idx.map(async (f) => new Uint8Array(await f.file.arrayBuffer())));
    const line = await call(() => wasm.load_idx(name, bytes[0], bytes[1], bytes[2], bytes[3], false));
    status('data-status', line + ' (IDX)');
  } else {
    const picked = files.filter((f) => !base(f.path).startsWith('.'));
    const contents = [];
    for (let i = 0; i < picked.length; i++) {
      contents.push(new Uint8Array(await picked[i].file.arrayBuffer()));
      if (i % 500 === 0) status('data-status', `Reading ${i + 1} of ${picked.length} files…`);
    }
    status('data-status', `Checking ${picked.length} files…`);
    const line = await call(() => wasm.load_files(name, picked.map((f) => f.path), contents));
    status('data-status', line);
  }
  haveData = true;
  setButtons();
  estimate();
}

// A dropped folder, walked recursively.
async function walk(entry, path, out) {
  if (entry.isFile) {
    const file = await new Promise((ok, no) => entry.file(ok, no));
    out.push({ path: path + entry.name, file });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((ok, no) => reader.readEntries(ok, no));
      if (batch.length === 0) break;
      for (const e of batch) await walk(e, path + entry.name + '/', out);
    }
  }
}

// ---- model ----

function fillPreset(name) {
  const p = presets.find((x) => x.name === name);
  if (!p) return;
  $('toml').dataset.preset = p.text;
  fillModel(p.text);
}

// The model file's text into the editor, and its epochs, batch and rate into the form.
function fillModel(text) {
  $('toml').value = text;
  const get = (re) => { const m = text.match(re); return m ? m[1] : ''; };
  $('epochs').value = get(/^\s*epochs\s*=\s*(\d+)/m);
  $('batch').value = get(/^\s*batch\s*=\s*(\d+)/m);
  $('lr').value = get(/\blr\s*=\s*([0-9.eE+-]+)/);
  const desc = get(/^description\s*=\s*"(.*)"/m);
  status('model-status', desc);
  fromLoaded = false;
}

// The URL's recipe overrides, into the form.
function urlOverrides() {
  for (const k of ['epochs', 'batch', 'lr', 'limit', 'seed']) if (params.has(k)) $(k).value = params.get(k);
}
let fromLoaded = false;

function options() {
  const num = (id, int) => {
    const v = $(id).value.trim();
    if (v === '') return undefined;
    const n = int ? parseInt(v, 10) : parseFloat(v);
    if (!Number.isFinite(n)) throw new Error(`${id}: not a number: ${v}`);
    return n;
  };
  const o = {
    epochs: num('epochs', true), batch: num('batch', true), lr: num('lr', false),
    limit: num('limit', true), seed: num('seed', true),
  };
  if (params.has('kernels')) o.kernels = params.get('kernels');
  if (params.has('tune_budget')) o.tune_budget = parseFloat(params.get('tune_budget'));
  if (params.get('profile') === '1') o.profile = true;
  if (fromLoaded) o.from_loaded = true;
  else if ($('toml').value !== $('toml').dataset.preset) o.toml = $('toml').value;
  else o.arch = $('preset').value;
  return o;
}

// ---- the time per epoch, measured ----

// Measures the form's model on a few steps of the loaded data (once the page is idle: a
// change of preset or setting asks again, the last asking wins).
let estimateWanted = 0;
async function estimate() {
  if (!opened || !haveData || training) return null;
  const ticket = ++estimateWanted;
  await new Promise((ok) => setTimeout(ok, 300));
  if (ticket !== estimateWanted || training) return null;
  let o;
  try { o = options(); } catch (e) { return null; }
  const before = $('model-status').textContent;
  status('model-status', 'Measuring the time per epoch on this adapter…');
  try {
    const e = JSON.parse(await call(() => wasm.estimate(JSON.stringify(o))));
    if (ticket !== estimateWanted) return null;
    status('model-status', `${e.arch}: about ${human(e.seconds_per_epoch)} per epoch on this adapter `
      + `(${e.steps_per_epoch} steps of ${human(e.seconds_per_step)}, measured on ${e.timed_steps}; test ${human(e.test_seconds)})`);
    console.log('ESTIMATE ' + JSON.stringify(e));
    return e;
  } catch (err) {
    status('model-status', before);
    console.log('ESTIMATE-FAILED ' + String(err));
    return null;
  }
}

// ---- training ----

async function startRun() {
  $('log').textContent = '';
  let o;
  try { o = options(); } catch (e) { fail('train-status', e); return; }
  clicked = performance.now();
  training = true;
  progress('Starting: preparing the data and the model…', { phase: 'starting', first: true });
  let st;
  try {
    st = JSON.parse(await call(() => wasm.start(JSON.stringify(o))));
  } catch (e) { training = false; throw e; }
  log(st.lines);
  for (const l of st.lines) if (l.startsWith('kernels:')) console.log('KERNELS ' + l);
  running = true;
  progress(`epoch 1/${st.epochs}: the first step (${st.steps} in the epoch; kernels are built on first use)…`,
    { phase: 'training', epoch: 1, epochs: st.epochs, step: 0, steps: st.steps });
  started = {
    options: { ...o, arch: st.arch, train_images: st.train_images, epoch_test_images: st.epoch_test_images },
    at: performance.now(),
  };
  setButtons();
  return loop();
}
let started = null;

const frame = () => new Promise((ok) => requestAnimationFrame(() => ok()));
const tick = () => new Promise((ok) => setTimeout(ok, 0));

async function loop() {
  while (running) {
    const r = JSON.parse(await call(() => wasm.step()));
    log(r.lines);
    const done = (r.epoch - 1 + r.step / r.steps) / r.epochs;
    $('bar').style.width = `${(100 * done).toFixed(1)}%`;
    const left = r.seconds_left == null ? '' : `; ${human(r.epoch_seconds_left)} left in the epoch, ${human(r.seconds_left)} in all`;
    progress(`epoch ${r.epoch}/${r.epochs}, step ${r.step}/${r.steps} (${r.images_done} of ${r.images} images): `
      + `loss ${r.running_loss.toFixed(4)}, accuracy ${(100 * r.running_acc).toFixed(2)}%, `
      + `${Math.round(r.images_per_second)} images/s${left}`,
    { phase: 'training', epoch: r.epoch, epochs: r.epochs, step: r.step, steps: r.steps, images_done: r.images_done,
      seconds_left: r.seconds_left, first: r.epoch === 1 && r.step === r.chunk });
    if (r.epoch_report || r.finished || performance.now() - lastChart > 700) await drawCharts();
    if (r.finished) {
      ended(r.finished);
      return r.finished;
    }
    // Let the page paint (and take clicks) between chunks; in a hidden tab, frames stop, so
    // only yield to the event loop there.
    await (document.hidden ? tick() : frame());
  }
  return null;
}

function ended(f) {
  log(f.lines);
  running = false;
  training = false;
  haveModel = true;
  $('bar').style.width = '100%';
  status('train-status', `done: ${f.epochs_run} epochs in ${f.seconds.toFixed(1)} s, test accuracy `
    + `${(100 * f.test_accuracy).toFixed(2)}% (loss ${f.test_loss.toFixed(4)}, ${f.test_images} pictures)`
    + `${f.stopped_early ? ', stopped early' : ''}`);
  setButtons();
  predictPad();
}

async function drawCharts() {
  lastChart = performance.now();
  const w = Math.max(420, Math.min(640, Math.round($('loss-chart').clientWidth || 560)));
  const [loss, acc] = JSON.parse(await call(() => wasm.charts(w, Math.round(w * 0.55))));
  $('loss-chart').innerHTML = loss;
  $('acc-chart').innerHTML = acc;
}

// ---- the pad ----

const pad = $('pad');
const ctx = pad.getContext('2d');
function clearPad() {
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, pad.width, pad.height);
  $('guesses').innerHTML = '';
  padEmpty = true;
}
let padEmpty = true;
let drawing = false;
let predictAgain = false;
let predicting = false;

function at(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}
pad.addEventListener('pointerdown', (e) => {
  drawing = true;
  pad.setPointerCapture(e.pointerId);
  ctx.strokeStyle = '#fff';
  ctx.lineWidth = 20;
  ctx.lineCap = 'round';
  ctx.lineJoin = 'round';
  ctx.beginPath();
  ctx.moveTo(...at(e));
  ctx.lineTo(...at(e));
  ctx.stroke();
  padEmpty = false;
});
pad.addEventListener('pointermove', (e) => {
  if (!drawing) return;
  ctx.lineTo(...at(e));
  ctx.stroke();
  predictPad();
});
pad.addEventListener('pointerup', () => { drawing = false; predictPad(); });

// Predicts the pad's picture (once more after the one in flight, if it changed meanwhile).
async function predictPad() {
  if (padEmpty || !(haveModel || training)) return null;
  if (predicting) { predictAgain = true; return null; }
  predicting = true;
  let guesses = null;
  try {
    const img = ctx.getImageData(0, 0, pad.width, pad.height);
    guesses = JSON.parse(await call(() => wasm.predict(new Uint8Array(img.data.buffer), img.width, img.height)));
    $('guesses').innerHTML = guesses.map((g) => `<li>${escapeHtml(g.name)} <small>${(100 * g.probability).toFixed(1)}%</small>`
      + `<div class="barwrap"><div class="bar" style="width:${(100 * g.probability).toFixed(1)}%"></div></div></li>`).join('');
  } catch (e) {
    fail('train-status', e);
  }
  predicting = false;
  if (predictAgain) { predictAgain = false; return predictPad(); }
  return guesses;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

async function loadPicture(file) {
  const bmp = await createImageBitmap(file);
  clearPad();
  const s = Math.min(pad.width / bmp.width, pad.height / bmp.height);
  const w = bmp.width * s;
  const h = bmp.height * s;
  ctx.drawImage(bmp, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  padEmpty = false;
  return predictPad();
}

// ---- downloads ----

async function modelFile() {
  const [name, bytes] = await call(() => wasm.model_file());
  return { name, bytes };
}

async function download() {
  const { name, bytes } = await modelFile();
  const url = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function upload(name, body) {
  const r = await fetch('/upload/' + name, { method: 'POST', body });
  if (!r.ok) throw new Error(`upload ${name}: ${r.status}`);
}

// ---- wiring ----

function wire() {
  $('mnist').onclick = () => loadMnist().catch((e) => fail('data-status', e));
  $('folder').onchange = (e) => {
    const files = [...e.target.files].map((file) => ({ path: file.webkitRelativePath || file.name, file }));
    loadFolder(files).catch((err) => fail('data-status', err));
  };
  const drop = $('drop');
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
  drop.ondragleave = () => drop.classList.remove('over');
  drop.ondrop = async (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    try {
      const out = [];
      for (const item of [...e.dataTransfer.items]) {
        const entry = item.webkitGetAsEntry && item.webkitGetAsEntry();
        if (entry) await walk(entry, '', out);
      }
      await loadFolder(out);
    } catch (err) { fail('data-status', err); }
  };
  $('preset').onchange = () => { fillPreset($('preset').value); estimate(); };
  for (const id of ['batch', 'limit']) $(id).onchange = () => estimate();
  $('model-file').onchange = async (e) => {
    const f = e.target.files[0];
    if (!f) return;
    try {
      const line = await call(async () => wasm.load_model(new Uint8Array(await f.arrayBuffer()), f.name));
      status('model-status', line + ' (Train continues training it)');
      fromLoaded = true;
      haveModel = true;
      setButtons();
      predictPad();
    } catch (err) { fail('model-status', err); }
  };
  $('start').onclick = () => startRun().catch((e) => { training = running = false; setButtons(); fail('train-status', e); });
  $('pause').onclick = () => {
    if (running) { running = false; status('train-status', 'paused'); }
    else { running = true; loop().catch((e) => fail('train-status', e)); }
    setButtons();
  };
  $('stop').onclick = async () => {
    running = false;
    try { ended(JSON.parse(await call(() => wasm.finish()))); await drawCharts(); } catch (e) { fail('train-status', e); }
  };
  $('download').onclick = () => download().catch((e) => fail('train-status', e));
  $('test').onclick = async () => {
    try {
      const r = JSON.parse(await call(() => wasm.evaluate()));
      status('train-status', `test: accuracy ${(100 * r.accuracy).toFixed(2)}%, loss ${r.loss.toFixed(4)} on ${r.count} images`);
    } catch (e) { fail('train-status', e); }
  };
  $('clear').onclick = clearPad;
  $('picture').onchange = (e) => e.target.files[0] && loadPicture(e.target.files[0]).catch((err) => fail('train-status', err));
}

// Draws a digit with the page's font, for a prediction without a hand.
function drawDigit(d) {
  clearPad();
  ctx.fillStyle = '#fff';
  ctx.font = 'bold 200px sans-serif';
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.fillText(String(d), pad.width / 2, pad.height / 2 + 10);
  padEmpty = false;
}

async function automatic(adapter) {
  if (params.get('selftest') === '1') {
    status('train-status', 'Checking every kernel against the reference…');
    const r = JSON.parse(await call(() => wasm.selftest(params.get('filter') || '')));
    for (const l of r.lines) if (!l.startsWith('pass')) console.log('SELFTEST-FAIL ' + l);
    console.log('SELFTEST ' + JSON.stringify({ passed: r.passed, failed: r.failed, adapter }));
    status('train-status', `self-test: ${r.passed} passed, ${r.failed} failed`, r.failed > 0);
  }
  if (params.has('modelfile')) {
    const url = params.get('modelfile');
    const r = await fetch(url);
    if (!r.ok) throw new Error(`${url}: ${r.status} ${r.statusText}`);
    fillModel(await r.text());
    urlOverrides();
  }
  if (params.has('model')) {
    const url = params.get('model');
    const line = await call(async () => wasm.load_model(await fetchBytes(url), url.split('/').pop()));
    status('model-status', line);
    fromLoaded = params.get('train') !== 'fresh';
    haveModel = true;
    setButtons();
  }
  const data = params.get('data') || (params.get('autostart') === '1' || params.get('evaluate') === '1' ? 'mnist' : '');
  if (data === 'mnist') await loadMnist();
  else if (data) await loadIdxUrl(data, data.replace(/\/+$/, '').split('/').pop() || 'data', params.get('digits') !== '0');
  if (params.get('estimate') === '1') await estimate();
  if (params.get('evaluate') === '1') {
    const r = JSON.parse(await call(() => wasm.evaluate()));
    console.log('EVAL ' + JSON.stringify({ ...r, adapter }));
    status('train-status', `test: accuracy ${(100 * r.accuracy).toFixed(2)}%, loss ${r.loss.toFixed(4)} on ${r.count} images`);
  }
  if (params.get('autostart') !== '1') return;
  const f = await startRun();
  if (!f) return;
  const result = { ...started.options, ...f, adapter, software, total_ms: Math.round(performance.now() - clicked) };
  delete result.toml;
  delete result.lines;
  if (params.has('digit')) {
    drawDigit(params.get('digit'));
    result.guesses = await predictPad();
  }
  if (params.get('post') === '1') {
    const { bytes } = await modelFile();
    await upload('model.safetensors', bytes);
    const png = await new Promise((ok) => pad.toBlob(ok, 'image/png'));
    await upload('digit.png', png);
    await upload('loss.svg', $('loss-chart').innerHTML);
    await upload('accuracy.svg', $('acc-chart').innerHTML);
  }
  console.log('RESULT ' + JSON.stringify(result));
}

// Whether the adapter is a software one (WebGPU on the CPU): SwiftShader, llvmpipe/lavapipe,
// WARP, Microsoft's basic render driver, or what wgpu's adapter info calls a CPU.
function isSoftware(adapter) {
  return /swiftshader|llvmpipe|lavapipe|warp|basic render|software|\(cpu\)/i.test(adapter);
}

// What the browser tells of its adapter (vendor, architecture, device, description).
async function adapterName() {
  try {
    const a = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
    const i = (a && a.info) || {};
    return [i.vendor, i.architecture, i.device, i.description].filter(Boolean).join(' ');
  } catch (e) {
    return '';
  }
}

async function main() {
  wire();
  if (!navigator.gpu) {
    $('nowebgpu').hidden = false;
    $('nowebgpu-why').textContent = 'navigator.gpu is missing'
      + (window.isSecureContext ? '.' : ': this page is not a secure context (see the last point).');
    status('gpu', 'No WebGPU in this browser.', true);
    console.error('ERROR no WebGPU: navigator.gpu is missing');
    $('app').classList.add('off');
    return;
  }
  await init();
  presets = JSON.parse(wasm.presets());
  const sel = $('preset');
  for (const p of presets) sel.add(new Option(p.name, p.name));
  sel.value = presets.some((p) => p.name === params.get('arch')) ? params.get('arch') : 'speedrun';
  const chosen = params.has('arch');
  fillPreset(sel.value);
  urlOverrides();
  if (params.has('arch') && !presets.some((p) => p.name === params.get('arch'))) {
    fail('model-status', `no preset called ${params.get('arch')}`);
    return;
  }
  clearPad();
  let adapter;
  try {
    const info = JSON.parse(await call(() => wasm.open()));
    opened = true;
    const named = await adapterName();
    adapter = named ? `${named}, ${info.adapter}` : info.adapter;
    software = isSoftware(adapter);
    console.log('ADAPTER ' + JSON.stringify({ adapter, software, kernels: info.kernels, compile_seconds: info.compile_seconds }));
    if (software) {
      status('gpu', `GPU: ${adapter}; ${info.kernels} kernels ready. This is a software adapter: WebGPU runs on `
        + 'the CPU here, so training is slow; the page starts with a small preset (fc-b).');
      $('gpu').classList.add('warn');
      if (!chosen) { sel.value = 'fc-b'; fillPreset('fc-b'); urlOverrides(); }
    } else {
      status('gpu', `GPU: ${adapter}; ${info.kernels} kernels ready`);
    }
  } catch (e) {
    // WebGPU is there but gives no adapter (a blocklisted GPU, a disabled feature): the same
    // advice applies.
    $('nowebgpu').hidden = false;
    $('nowebgpu-why').textContent = String(e);
    status('gpu', String(e), true);
    console.error('ERROR no WebGPU: ' + e);
    return;
  }
  setButtons();
  try {
    await automatic(adapter);
  } catch (e) {
    fail('train-status', e);
  }
}

main();
