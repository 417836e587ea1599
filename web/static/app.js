// The review page: send a lesion's photos to pigment, draw the answer.
// No framework, no build step, nothing from another origin. The inference key comes from the address's fragment
// (#key=..., which browsers never send to a server), is kept in this script's memory only and is removed from the
// address bar at once. Both API calls go to this page's own origin (web/server.py relays them to TorchServe).
"use strict";

const FIELDS = ["clinical_image", "dermoscopy_image", "multispectral_image"];
const MODALITY_OF = {clinical_image: "clinical", dermoscopy_image: "dermoscopy", multispectral_image: "multispectral"};
const MODALITY_NAMES = {clinical: "clinical photo", dermoscopy: "dermoscopy image",
                        multispectral: "multispectral image"};
const BAND_ORDER = ["Mild", "Moderate", "Severe"];
const QUALITY_WORDS = {blurred: "looks blurred", blurry: "looks blurred", dark: "is too dark", too_dark: "is too dark",
                       underexposed: "is too dark", bright: "is too bright", too_bright: "is too bright",
                       overexposed: "is too bright", small: "is very small", too_small: "is very small",
                       low_contrast: "has very little contrast", saturated: "has clipped (saturated) colours"};

const state = {
  key: null,            // the inference key, in memory only
  files: {},            // field -> File
  objectUrls: {},       // field -> blob: URL of the chosen file (previews and the report)
  config: {model: "pigment", bands: null},
  run: 0,               // increases with every submit; late answers of an older run are ignored
};

const $ = (selector, root = document) => root.querySelector(selector);

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

// -- the key ---------------------------------------------------------------------------------------------------
function takeKeyFromAddress() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("key")) {
    state.key = params.get("key");
    history.replaceState(null, "", location.pathname + location.search);  // out of the address bar and history
  }
  showKeyStatus(state.key ? null : "missing");
}

function showKeyStatus(problem, detail) {
  const box = $("#key-status");
  box.replaceChildren();
  if (!problem) {
    box.hidden = true;
    return;
  }
  const renew = element("p", {}, "To get a new address, run ", element("code", {text: "make serve"}),
    " again in the pigment folder: it prints the page's address with a fresh key (",
    element("code", {text: "http://127.0.0.1:3000/#key=…"}), "). Open that address; keys last 60 minutes.");
  if (problem === "missing") {
    box.append(element("strong", {text: "This page has no key."}),
      element("p", {text: "The model server only answers requests that carry its key, and this address has none."}),
      renew);
  } else {
    box.append(element("strong", {text: "The key in this page's address was refused: it is wrong or has expired."}),
      element("p", {text: `The model server said: “${detail}”`}), renew);
  }
  box.dataset.problem = problem;
  box.hidden = false;
}

// -- choosing files --------------------------------------------------------------------------------------------
function fieldset(field) {
  return $(`#field-${field}`);
}

function setFile(field, file) {
  const box = fieldset(field);
  if (state.objectUrls[field]) URL.revokeObjectURL(state.objectUrls[field]);
  delete state.objectUrls[field];
  delete state.files[field];
  const preview = $(".preview", box);
  if (file) {
    state.files[field] = file;
    state.objectUrls[field] = URL.createObjectURL(file);
    preview.src = state.objectUrls[field];
  } else {
    preview.removeAttribute("src");
    $("input[type=file]:not([data-camera-for])", box).value = "";
  }
  preview.hidden = !file;
  const hint = $(".hint", box);
  hint.dataset.empty ??= hint.textContent;
  hint.textContent = file ? file.name : hint.dataset.empty;
  $(".remove", box).hidden = !file;
  box.classList.toggle("has-file", Boolean(file));
  showFieldError(field, "");
}

function wireField(field) {
  const box = fieldset(field);
  const drop = $(".drop", box);
  $(`input[name=${field}]`, box).addEventListener("change", (event) => setFile(field, event.target.files[0]));
  $(`input[data-camera-for=${field}]`, box).addEventListener("change", (event) => setFile(field, event.target.files[0]));
  $(".remove", box).addEventListener("click", () => setFile(field, null));
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("dragging");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    if (event.dataTransfer.files.length) setFile(field, event.dataTransfer.files[0]);
  });
}

// -- errors ----------------------------------------------------------------------------------------------------
function showFieldError(field, message) {
  const target = FIELDS.includes(field) ? $(`#${field}-error`) : $("#form-error");
  target.textContent = message;
  if (FIELDS.includes(field)) fieldset(field).classList.toggle("invalid", Boolean(message));
}

function clearErrors() {
  for (const field of [...FIELDS, "form"]) showFieldError(field, "");
}

/** A refused request: the key, a named field, or the whole request. ``body`` is the parsed JSON or null. */
function showFailure(status, body) {
  if (body && body.type === "InvalidKeyException") {
    showKeyStatus("refused", body.message);
    return;
  }
  if (status === 413) {
    showFieldError("form", "The photos are too large together for the server (at most 32 MiB); send smaller files.");
    return;
  }
  const message = (body && (body.error || body.message)) || `The server answered ${status} without an explanation.`;
  const named = String((body && body.field) || "").split(",").filter((field) => FIELDS.includes(field));
  if (named.length) named.forEach((field) => showFieldError(field, message));
  else showFieldError("form", message);
}

// -- calling the server ----------------------------------------------------------------------------------------
async function post(route, form) {
  const response = await fetch(`/${route}/${state.config.model}`, {
    method: "POST", body: form, headers: {Authorization: `Bearer ${state.key}`}, credentials: "omit",
    referrerPolicy: "no-referrer", cache: "no-store",
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;  // TorchServe's 413 has an empty body
  }
  return {ok: response.ok, status: response.status, body};
}

function formFromFiles() {
  const form = new FormData();
  for (const field of FIELDS) if (state.files[field]) form.append(field, state.files[field], state.files[field].name);
  return form;
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  if (!state.files.clinical_image) {
    showFieldError("clinical_image", "Choose the clinical photo: it is required.");
    return;
  }
  if (!state.key) {
    showKeyStatus("missing");
    return;
  }
  const run = ++state.run;
  const sent = {...state.files};
  const urls = {...state.objectUrls};
  $("#busy").hidden = false;
  $("#score-button").disabled = true;
  const explained = post("explanations", formFromFiles()).catch((error) => ({ok: false, status: 0, error}));
  try {
    const predicted = await post("predictions", formFromFiles());
    if (run !== state.run) return;
    if (!predicted.ok) {
      showFailure(predicted.status, predicted.body);
      $("#result").hidden = true;
      return;
    }
    showKeyStatus(null);
    renderAnswer(predicted.body, sent, urls);
    renderOverlays(await explained, predicted.body, urls, run);
  } catch (error) {
    if (run === state.run) showFieldError("form", `The page server did not answer (${error.message}). Is it running? `
                                                  + "Start it with make serve.");
  } finally {
    if (run === state.run) {
      $("#busy").hidden = true;
      $("#score-button").disabled = false;
    }
  }
}

// -- drawing the answer ----------------------------------------------------------------------------------------
const isNumber = (value) => typeof value === "number" && Number.isFinite(value);
const percent = (value) => `${Math.round(value * 100)} %`;
const position = (value) => `${Math.min(Math.max(value, 0), 1) * 100}%`;

function renderAnswer(answer, sent, urls) {
  $("#result").hidden = false;
  $("#result").dataset.answer = "ready";
  renderScore(answer);
  renderWarnings(answer);
  renderProbabilities(answer.severity_probabilities);
  renderAttention(answer.attention);
  renderPhotos(answer.modalities || Object.keys(sent).map((field) => MODALITY_OF[field]), urls);
  const when = new Date().toLocaleString();
  $("#provenance").textContent = `Model version ${answer.model_version ?? "not given"} · scored ${when} · `
    + `images sent: ${Object.values(sent).map((file) => file.name).join(", ")}`;
}

function renderScore(answer) {
  const severity = $("#severity");
  severity.textContent = answer.severity ?? "";
  severity.className = `band-${String(answer.severity || "").toLowerCase()}`;
  const value = $("#score-value");
  value.textContent = isNumber(answer.score) ? answer.score.toFixed(2) : "not given";
  value.dataset.score = isNumber(answer.score) ? String(answer.score) : "";
  value.title = isNumber(answer.score) ? `score ${answer.score} on a 0 to 1 scale` : "";

  const bands = state.config.bands;
  const bandBox = $("#scale-bands");
  const ticks = $("#scale-ticks");
  bandBox.replaceChildren();
  ticks.replaceChildren();
  if (bands) {
    for (const band of bands) {
      const part = element("div", {class: `band band-${band.name.toLowerCase()}`, text: band.name});
      part.style.width = position(band.high - band.low);
      part.classList.toggle("current", band.name === answer.severity);
      bandBox.append(part);
      const tick = element("span", {class: "tick", text: band.low.toFixed(2)});
      tick.style.left = position(band.low);
      ticks.append(tick);
    }
    const last = element("span", {class: "tick", text: "1.00"});
    last.style.left = "100%";
    ticks.append(last);
  } else {
    bandBox.append(element("div", {class: "band band-unknown", text: "band limits not known to this page"}));
  }
  $("#scale-marker").style.left = position(answer.score);
  $("#scale-marker").hidden = !isNumber(answer.score);

  const interval = answer.interval;
  const drawn = interval && isNumber(interval.low) && isNumber(interval.high);
  const intervalBox = $("#scale-interval");
  intervalBox.hidden = !drawn;
  if (drawn) {
    intervalBox.style.left = position(interval.low);
    intervalBox.style.width = position(interval.high - interval.low);
    const span = `${interval.low.toFixed(2)} to ${interval.high.toFixed(2)}`;
    $("#interval-text").textContent = isNumber(interval.coverage)
      ? `${Math.round(interval.coverage * 100)} % interval: ${span} (the framed span on the scale; the true score `
        + `falls in such spans ${Math.round(interval.coverage * 100)} % of the time).`
      : `Interval: ${span} (the framed span on the scale).`;
  } else {
    $("#interval-text").textContent = "This answer carries no interval, so how certain the score is is not shown.";
  }
}

function crossedBands(interval) {
  const bands = state.config.bands;
  if (!bands || !interval || !isNumber(interval.low) || !isNumber(interval.high)) return [];
  return bands.filter((band) => interval.high > band.low && interval.low <= band.high).map((band) => band.name);
}

function renderWarnings(answer) {
  const list = $("#warnings");
  list.replaceChildren();
  const add = (kind, text) => list.append(element("li", {class: `warning warning-${kind}`, text}));
  if (answer.in_distribution === false) {
    const numbers = isNumber(answer.ood_score) && isNumber(answer.ood_threshold)
      ? ` (out-of-distribution score ${answer.ood_score.toFixed(1)}, limit ${answer.ood_threshold.toFixed(1)})` : "";
    add("ood", `These images look unlike the images the model learned from${numbers}. `
             + "The score may be unreliable; check the photos or review the lesion yourself.");
  }
  for (const item of answer.quality_warnings || []) {
    const what = MODALITY_NAMES[item.modality] || item.modality || "an image";
    const words = QUALITY_WORDS[item.warning] || String(item.warning).replaceAll("_", " ");
    add("quality", `The ${what} ${words}; a clearer image gives a more trustworthy score.`);
  }
  const crossed = crossedBands(answer.interval);
  if (crossed.length > 1) {
    add("interval", `The interval reaches into ${crossed.join(" and ")}: the band is not certain.`);
  }
  for (const modality of answer.simulated || []) {
    add("simulated", `No ${MODALITY_NAMES[modality] || modality} was sent; the model used one simulated from `
                   + "the other photos.");
  }
  if (!list.children.length) {
    const checked = answer.in_distribution === true || Array.isArray(answer.quality_warnings);
    add("none", checked ? "None: the images passed the server's checks."
                        : "None reported (this server's answers carry no distribution or image-quality checks).");
  }
}

function bar(label, value, className) {
  const fill = element("span", {class: "fill"});
  fill.style.width = position(value);
  return element("div", {class: `bar ${className}`, "data-label": label, "data-value": String(value)},
    element("span", {class: "bar-label", text: label}), element("span", {class: "track"}, fill),
    element("span", {class: "bar-value", text: percent(value)}));
}

function renderProbabilities(probabilities) {
  const box = $("#probabilities");
  box.replaceChildren();
  if (!probabilities || typeof probabilities !== "object") {
    box.append(element("p", {class: "muted", text: "Not in this answer."}));
    return;
  }
  const names = [...BAND_ORDER.filter((name) => name in probabilities),
                 ...Object.keys(probabilities).filter((name) => !BAND_ORDER.includes(name))];
  for (const name of names) {
    if (isNumber(probabilities[name])) box.append(bar(name, probabilities[name], `band-${name.toLowerCase()}`));
  }
}

function renderAttention(attention) {
  const box = $("#attention");
  box.replaceChildren();
  if (!attention || typeof attention !== "object") {
    box.append(element("p", {class: "muted", text: "Not in this answer."}));
    return;
  }
  for (const [token, weight] of Object.entries(attention)) {
    if (!isNumber(weight)) continue;
    const label = token === "none" ? "clinical photo alone" : MODALITY_NAMES[token] || token;
    box.append(bar(label, weight, `token-${token}`));
  }
}

function renderPhotos(modalities, urls) {
  const box = $("#images");
  box.replaceChildren();
  $("#images-status").textContent = "Computing where the model looked…";
  for (const modality of modalities) {
    const url = urls[`${modality}_image`];
    const photo = url ? element("img", {class: "photo", src: url, alt: `${MODALITY_NAMES[modality]} as sent`})
                      : element("p", {class: "muted", text: "simulated, no photo"});
    box.append(element("figure", {class: "pair", "data-modality": modality},
      element("figcaption", {text: MODALITY_NAMES[modality] || modality}),
      element("div", {class: "pair-images"}, element("div", {class: "slot photo-slot"}, photo),
              element("div", {class: "slot overlay-slot"}))));
  }
}

function renderOverlays(explained, predictedAnswer, urls, run) {
  if (run !== state.run) return;
  const status = $("#images-status");
  if (!explained.ok) {
    const why = explained.body ? explained.body.error || explained.body.message : explained.error?.message;
    status.textContent = `The heat maps could not be computed: ${why || `status ${explained.status}`}.`;
    return;
  }
  const heatmaps = explained.body.heatmaps || {};
  for (const [modality, map] of Object.entries(heatmaps)) {
    const pair = $(`figure[data-modality=${modality}]`);
    if (!pair) continue;
    const overlay = element("img", {class: "overlay", alt: `Grad-CAM heat over the ${MODALITY_NAMES[modality]}`,
                                    src: `data:image/png;base64,${map.png_base64}`});
    const note = map.peak > 0 ? `heat peak ${map.peak.toFixed(2)}` : "no region raised the score";
    $(".overlay-slot", pair).replaceChildren(overlay, element("span", {class: "slot-note", text: note}));
  }
  status.textContent = "Left: the image as sent. Right: Grad-CAM, where the model's last stage reacted (coarse; "
    + "red is more).";
  if (isNumber(explained.body.score) && isNumber(predictedAnswer.score)
      && Math.abs(explained.body.score - predictedAnswer.score) > 0.01) {
    status.textContent += ` The maps come from the full-precision model, whose score was ${explained.body.score}.`;
  }
}

// -- start -----------------------------------------------------------------------------------------------------
async function loadConfig() {
  try {
    const response = await fetch("/config.json", {cache: "no-store"});
    if (response.ok) state.config = {...state.config, ...(await response.json())};
  } catch {
    // keep the defaults: the scale is drawn without band limits
  }
}

function start() {
  takeKeyFromAddress();
  window.addEventListener("hashchange", takeKeyFromAddress);
  FIELDS.forEach(wireField);
  $("#lesion-form").addEventListener("submit", submit);
  $("#print-button").addEventListener("click", () => window.print());
  loadConfig().then(() => document.body.dataset.ready = "true");
}

start();
