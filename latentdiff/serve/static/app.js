// latentdiff serve: the page. Vanilla JS over the HTTP API (latentdiff/serve/app.py); every value is
// checked by the server, which names the field of any refusal (shown in #error).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: {}, job: null, control: null, variation: null, restoring: false };

function setStatus(text) { $("status").textContent = text; }
function setError(text) { $("error").textContent = text || ""; }

function fillSelect(select, values, labels) {
  select.replaceChildren(...values.map((v, i) => {
    const option = document.createElement("option");
    option.value = v;
    option.textContent = labels ? labels[i] : v;
    return option;
  }));
}

async function api(method, path, body, headers) {
  const response = await fetch(path, { method, body, headers });
  let data = null;
  try { data = await response.json(); } catch (e) { data = { error: `${response.status} ${response.statusText}` }; }
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

// ------------------------------------------------------------------ the model and its sections
function applyModel(name, withDefaults) {
  const m = state.models[name];
  if (!m) return;
  $("model").value = name;
  $("text-section").hidden = !m.text;
  $("class-section").hidden = m.classes.length === 0;
  $("control-section").hidden = !m.controlnet;
  $("lora-section").hidden = m.lora.length === 0;
  $("upscale-section").hidden = !m.upscale;
  $("variation-section").hidden = !m.variations;
  fillSelect($("class-label"), ["", ...m.classes], ["all classes in turn", ...m.classes]);
  fillSelect($("upscaler"), ["", ...m.upscalers], ["none", ...m.upscalers]);
  $("control-kind").textContent = m.control_kind || "edges";
  $("lora-list").replaceChildren(...m.lora.map((adapter) => {
    const row = document.createElement("div");
    row.className = "lora-row";
    row.innerHTML = '<label class="inline"><input type="checkbox" class="lora-enable"> <span></span></label>' +
      '<input type="number" class="lora-scale" step="0.1" value="1">';
    row.querySelector("span").textContent = adapter;
    row.dataset.name = adapter;
    return row;
  }));
  const about = m.description ? `: ${m.description}` : "";
  $("model-info").textContent = `${m.task}, ${m.image_size}x${m.image_size}${about}`;
  if (withDefaults) {
    const d = m.defaults;
    $("sampler").value = d.sampler; $("steps").value = d.steps; $("spacing").value = d.spacing;
    $("guidance").value = d.guidance; $("threshold").value = d.threshold;
  }
}

// a field's value as JSON: a number where it reads as one, else the text itself (so that the server
// refuses it by name instead of the page sending null)
function numberOf(id) {
  const text = $(id).value.trim();
  const value = Number(text);
  return text !== "" && Number.isFinite(value) ? value : text;
}

function requestBody() {
  const m = state.models[$("model").value];
  const seed = $("seed").value.trim();
  const body = {
    model: $("model").value, sampler: $("sampler").value, steps: numberOf("steps"), spacing: $("spacing").value,
    guidance: numberOf("guidance"), threshold: $("threshold").value, n: numberOf("n"),
    seed: seed === "random" || seed === "" ? "random" : numberOf("seed"),
  };
  if (m.text) { body.prompt = $("prompt").value; body.negative_prompt = $("negative-prompt").value; }
  if (m.classes.length && $("class-label").value !== "") body.class_label = $("class-label").value;
  if (m.controlnet) {
    if (state.control) body.control = state.control;
    body.control_from_photo = $("control-from-photo").checked;
    body.control_scale = numberOf("control-scale");
    body.control_start = numberOf("control-start");
    body.control_end = numberOf("control-end");
  }
  const lora = [...document.querySelectorAll("#lora-list .lora-row")]
    .filter((row) => row.querySelector(".lora-enable").checked)
    .map((row) => ({ name: row.dataset.name, scale: Number(row.querySelector(".lora-scale").value) }));
  if (lora.length) body.lora = lora;
  if (m.upscale && $("upscaler").value) body.upscaler = $("upscaler").value;
  if (m.variations && state.variation) body.variation_image = state.variation;
  return body;
}

// ------------------------------------------------------------------ generating
async function generate() {
  setError("");
  let job;
  try {
    job = await api("POST", "/api/jobs", JSON.stringify(requestBody()), { "Content-Type": "application/json" });
  } catch (err) { setError(err.message); setStatus("error"); return; }
  state.job = job.id;
  $("generate").disabled = true; $("cancel").disabled = false;
  $("progress").max = job.steps || 1; $("progress").value = 0;
  setStatus("queued");
  poll(job.id);
}

async function poll(id) {
  while (state.job === id) {
    let job;
    try { job = await api("GET", `/api/jobs/${id}`); } catch (err) { finish(id, "error", err.message); return; }
    $("progress").max = job.steps || 1;
    $("progress").value = job.step;
    if (job.preview) $("preview").src = "data:image/png;base64," + job.preview;
    if (job.state === "done") { addResults(job.result); finish(id, "done"); return; }
    if (job.state === "cancelled" || job.state === "error") {
      finish(id, job.state, job.state === "error" ? job.error : "");
      return;
    }
    setStatus(job.state === "running" ? `running: step ${job.step} of ${job.steps}` : "queued");
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

function finish(id, status, error) {
  if (state.job !== id) return;
  state.job = null;
  $("generate").disabled = false; $("cancel").disabled = true;
  setStatus(status);
  if (error) setError(error);
}

async function cancel() {
  const id = state.job;
  if (!id) return;
  try { await api("DELETE", `/api/jobs/${id}`); } catch (err) { setError(err.message); }
}

function pngBlob(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "image/png" });
}

function addResults(result) {
  result.images.forEach((image, i) => {
    const blob = pngBlob(image);
    const url = URL.createObjectURL(blob);
    const seed = result.seeds[i];
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.className = "result"; img.src = url; img.dataset.seed = String(seed);
    img.title = result.parameters[i] + "\n(click: restore these parameters)";
    img.addEventListener("click", () => restoreFrom(blob, `seed ${seed}`));
    const link = document.createElement("a");
    link.className = "download"; link.href = url; link.download = `latentdiff-${result.model}-${seed}.png`;
    link.textContent = `seed ${seed}`;
    const caption = document.createElement("figcaption");
    caption.append(link);
    figure.append(img, caption);
    $("gallery").prepend(figure);
  });
}

// ------------------------------------------------------------------ restoring from a PNG
// an adapter as a PNG records it ("NAME:SCALE") or as a request has it ({name, scale}) -> [name, scale]
function adapterScale(adapter) {
  if (typeof adapter !== "string") return [adapter.name, adapter.scale];
  const colon = adapter.lastIndexOf(":");
  return colon < 0 ? [adapter, 1] : [adapter.slice(0, colon), Number(adapter.slice(colon + 1))];
}

async function restoreFrom(file, what) {
  setError("");
  let read;
  try {
    read = await api("POST", "/api/read-png", file, { "Content-Type": "image/png" });
  } catch (err) { setError(err.message); setStatus("error"); return; }
  const fields = (read.config && read.config.request) || read.parameters || {};
  let note = "";
  if (fields.model in state.models) applyModel(fields.model, false);
  else if (fields.model) note = ` (its model ${fields.model} is not on this server)`;
  const set = (id, value) => { if (value !== undefined && value !== null) $(id).value = value; };
  set("prompt", fields.prompt); set("negative-prompt", fields.negative_prompt);
  set("sampler", fields.sampler); set("steps", fields.steps); set("spacing", fields.spacing);
  set("guidance", fields.guidance); set("threshold", fields.threshold); set("seed", fields.seed);
  if (fields.class_label !== undefined && fields.class_label !== null) set("class-label", String(fields.class_label));
  const scale = Array.isArray(fields.control_scale) ? fields.control_scale[0] : fields.control_scale;
  set("control-scale", scale); set("control-start", fields.control_start); set("control-end", fields.control_end);
  if (fields.upscaler) set("upscaler", fields.upscaler);
  const adapters = typeof fields.lora === "string" ? fields.lora.split(" ") : fields.lora || [];
  const scales = Object.fromEntries(adapters.map(adapterScale));
  document.querySelectorAll("#lora-list .lora-row").forEach((row) => {
    const on = row.dataset.name in scales;
    row.querySelector(".lora-enable").checked = on;
    if (on) row.querySelector(".lora-scale").value = scales[row.dataset.name];
  });
  setStatus(`restored the parameters of ${what}${note}`);
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// ------------------------------------------------------------------ start
async function start() {
  try {
    const [options, models] = await Promise.all([api("GET", "/api/options"), api("GET", "/api/models")]);
    fillSelect($("sampler"), options.samplers);
    fillSelect($("spacing"), options.spacings);
    fillSelect($("threshold"), options.thresholds);
    $("steps").max = options.limits.max_steps; $("n").max = options.limits.max_images;
    models.forEach((m) => { state.models[m.name] = m; });
    fillSelect($("model"), models.map((m) => m.name));
    if (models.length) applyModel(models[0].name, true);
    setStatus(models.length ? "ready" : "no models");
  } catch (err) { setError(err.message); setStatus("error"); }
  $("model").addEventListener("change", () => applyModel($("model").value, true));
  $("generate").addEventListener("click", generate);
  $("cancel").addEventListener("click", cancel);
  $("seed-random").addEventListener("click", () => { $("seed").value = "random"; });
  $("control-image").addEventListener("change", async (e) => {
    state.control = e.target.files[0] ? await readAsDataURL(e.target.files[0]) : null;
  });
  $("variation-image").addEventListener("change", async (e) => {
    state.variation = e.target.files[0] ? await readAsDataURL(e.target.files[0]) : null;
  });
  $("png-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) restoreFrom(file, file.name);
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) restoreFrom(file, file.name);
  });
}

document.addEventListener("DOMContentLoaded", start);
