// The review page's only script: served from this origin (the Content-Security-Policy allows nothing else),
// no dependencies, no build step. Talks to the keyed API: GET /model (thresholds, limits), POST /predict,
// POST /v1/explain. The key lives in sessionStorage and goes in the X-API-Key header, never in a URL.
"use strict";

(() => {
  const KEY_NAME = "photo-detector.api-key";
  const LABELS = { ai_generated: "AI-generated", real: "Real photo" };
  const FALLBACK_FORMATS = ["JPEG", "PNG", "WEBP"];
  let model = null; // GET /model: model_version, thresholds, limits

  const $ = (selector, root = document) => root.querySelector(selector);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const storedKey = () => sessionStorage.getItem(KEY_NAME) || "";

  function megabytes(bytes) {
    return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
  }

  function fileSize(bytes) {
    return bytes < 1024 * 1024 ? `${Math.max(1, Math.round(bytes / 1024))} KB` : megabytes(bytes);
  }

  function formatNames() {
    const names = (model && model.limits && model.limits.formats) || FALLBACK_FORMATS;
    return names.map((n) => (n === "WEBP" ? "WebP" : n)).join(", ");
  }

  // What a reviewer reads for each failure: the status in words, the service's own message, the request id.
  function errorText(status, body) {
    const said = (body && body.error) || "";
    const limits = model && model.limits;
    let text;
    if (status === 401) {
      text = "Wrong key: the service refused this API key (401). Enter the key again.";
    } else if (status === 413) {
      const limit = limits
        ? ` This service takes up to ${megabytes(limits.max_body_bytes)} per upload and ` +
          `${(limits.max_image_pixels / 1e6).toFixed(0)} megapixels per image.`
        : "";
      text = `Too large (413): ${said}.${limit}`;
    } else if (status === 415) {
      text = `Unsupported format (415): the service accepts ${formatNames()}.`;
    } else if (status === 422) {
      text = `This file cannot be decoded (422): ${said}`;
    } else if (status === 503) {
      text = `The service is not ready or too busy (503): ${said}. Try again in a moment.`;
    } else {
      text = `Error ${status}: ${said || "the request failed"}`;
    }
    return body && body.request_id ? `${text} (request id ${body.request_id})` : text;
  }

  async function call(path, init = {}) {
    const key = storedKey();
    if (!key) throw new ApiError(0, "Enter the API key first.");
    const headers = new Headers(init.headers || {});
    headers.set("X-API-Key", key);
    const started = performance.now();
    let response;
    try {
      response = await fetch(path, { ...init, headers, cache: "no-store", credentials: "omit" });
    } catch (err) {
      throw new ApiError(0, `The service cannot be reached: ${err.message}`);
    }
    const roundTrip = performance.now() - started;
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) throw new ApiError(response.status, errorText(response.status, body));
    return { body, serverTiming: response.headers.get("server-timing") || "", roundTrip };
  }

  // ---- the key

  function showKeyStatus(text, isError) {
    const status = $("#key-status");
    status.textContent = text;
    status.classList.toggle("is-error", Boolean(isError));
    $("#key-input").setAttribute("aria-invalid", isError ? "true" : "false");
  }

  async function loadModel() {
    const { body } = await call("/model");
    model = body;
    const t = model.thresholds.classification;
    showKeyStatus(`Key accepted. Model ${model.model_version}; decision threshold ${t}.`, false);
    $("#key-forget").hidden = false;
    $("#formats-help").textContent =
      `${formatNames()}; up to ${megabytes(model.limits.max_body_bytes)} each; one or more at a time.`;
    return model;
  }

  async function useKey(event) {
    event.preventDefault();
    const input = $("#key-input");
    const key = input.value.trim();
    if (!key) {
      showKeyStatus("Type the API key first.", true);
      input.focus();
      return;
    }
    sessionStorage.setItem(KEY_NAME, key);
    input.value = "";
    model = null;
    try {
      await loadModel();
    } catch (err) {
      if (err.status === 401) sessionStorage.removeItem(KEY_NAME);
      showKeyStatus(err.message, true);
      input.focus();
    }
  }

  function forgetKey() {
    sessionStorage.removeItem(KEY_NAME);
    model = null;
    $("#key-forget").hidden = true;
    showKeyStatus("Key forgotten.", false);
    $("#key-input").focus();
  }

  // ---- one result card per photo

  function parseServerTiming(header) {
    return header
      .split(",")
      .map((entry) => entry.trim())
      .filter(Boolean)
      .map((entry) => {
        const [name, ...params] = entry.split(";").map((p) => p.trim());
        const dur = params.find((p) => p.startsWith("dur="));
        return { name, ms: dur ? Number(dur.slice(4)) : 0 };
      });
  }

  function timingText(header, roundTrip) {
    const phases = parseServerTiming(header);
    const total = phases.reduce((sum, p) => sum + p.ms, 0);
    const parts = phases.map((p) => `${p.name} ${p.ms.toFixed(1)}`);
    return `${parts.join(" · ")} ms; server ${total.toFixed(1)} ms, round trip ${roundTrip.toFixed(0)} ms`;
  }

  function drawBands(card, thresholds) {
    // Confidence from the margin to the threshold t, scaled per side (photo_detector.decision): high at
    // >= high_confidence, low below low_confidence. At t = 0.5 the bands are symmetric.
    const t = thresholds.classification;
    const below = (m) => t * (1 - m);
    const above = (m) => t + (1 - t) * m;
    const h = thresholds.high_confidence;
    const l = thresholds.low_confidence;
    const bands = $(".bands", card);
    bands.replaceChildren();
    for (const [from, to, name] of [[0, below(h), "high"], [below(h), below(l), "medium"],
      [below(l), above(l), "low"], [above(l), above(h), "medium"], [above(h), 1, "high"]]) {
      const band = document.createElement("span");
      band.className = `band band-${name}`;
      band.style.width = `${((to - from) * 100).toFixed(3)}%`;
      band.textContent = to - from >= 0.12 ? name : "";
      bands.append(band);
    }
  }

  function showError(card, message) {
    const error = $(".error", card);
    error.textContent = message;
    error.hidden = false;
  }

  function showPrediction(card, body, serverTiming, roundTrip) {
    const p = body.probability;
    const t = model.thresholds.classification;
    const verdict = $(".verdict", card);
    verdict.dataset.label = body.prediction;
    verdict.textContent = LABELS[body.prediction] || body.prediction;
    verdict.classList.add(`verdict-${body.prediction}`);
    const fill = $(".bar-fill", card);
    fill.style.width = `${(p * 100).toFixed(3)}%`;
    fill.classList.add(`fill-${body.prediction}`);
    $(".bar-threshold", card).style.left = `${(t * 100).toFixed(3)}%`;
    drawBands(card, model.thresholds);
    const probability = $(".probability", card);
    probability.dataset.probability = String(p);
    probability.textContent =
      `P(ai_generated) = ${p.toFixed(6)} (${(p * 100).toFixed(1)} %); ` +
      `AI-generated from ${t} (the marked line).`;
    $(".confidence", card).textContent = body.confidence;
    $(".model-version", card).textContent = body.model_version;
    $(".timing", card).textContent = timingText(serverTiming, roundTrip);
    $(".explain-button", card).disabled = false;
  }

  function showOverlay(card, body) {
    const overlay = $(".overlay", card);
    const { grid, delta, region } = body;
    const scale = body.max_abs_delta || 1;
    overlay.style.left = `${region.left * 100}%`;
    overlay.style.top = `${region.top * 100}%`;
    overlay.style.width = `${region.width * 100}%`;
    overlay.style.height = `${region.height * 100}%`;
    overlay.style.gridTemplateColumns = `repeat(${grid}, 1fr)`;
    overlay.style.gridTemplateRows = `repeat(${grid}, 1fr)`;
    overlay.replaceChildren();
    let best = { value: 0, row: 0, col: 0 };
    delta.forEach((row, r) => row.forEach((value, c) => {
      const cell = document.createElement("span");
      cell.className = "cell";
      const alpha = Math.min(1, Math.abs(value) / scale) * 0.65;
      cell.style.backgroundColor = value >= 0 ? `rgba(220, 38, 38, ${alpha})` : `rgba(37, 99, 235, ${alpha})`;
      cell.title = `row ${r + 1}, column ${c + 1}: hiding it changes P(ai_generated) by ${(-value).toFixed(4)}`;
      overlay.append(cell);
      if (Math.abs(value) > Math.abs(best.value)) best = { value, row: r + 1, col: c + 1 };
    }));
    const summary = `Occlusion map, ${grid} by ${grid}: the strongest cell is row ${best.row}, column ` +
      `${best.col}; hiding it changes P(ai_generated) by ${(-best.value).toFixed(4)}.`;
    overlay.setAttribute("aria-label", summary);
    overlay.hidden = false;
    const toggle = $(".overlay-toggle", card);
    toggle.hidden = false;
    toggle.setAttribute("aria-pressed", "true");
    toggle.textContent = "Hide map";
    $(".legend", card).hidden = false;
    return summary;
  }

  async function explain(card, file) {
    const button = $(".explain-button", card);
    const status = $(".explain-status", card);
    button.disabled = true;
    status.textContent = "Mapping where the model looks…";
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const { body, serverTiming, roundTrip } = await call("/v1/explain", { method: "POST", body: form });
      $(".error", card).hidden = true;
      const summary = showOverlay(card, body);
      status.textContent = `${summary} (${timingText(serverTiming, roundTrip)})`;
    } catch (err) {
      status.textContent = "";
      showError(card, err.message);
    } finally {
      button.disabled = false;
    }
  }

  function toggleOverlay(card) {
    const overlay = $(".overlay", card);
    const toggle = $(".overlay-toggle", card);
    overlay.hidden = !overlay.hidden;
    toggle.setAttribute("aria-pressed", overlay.hidden ? "false" : "true");
    toggle.textContent = overlay.hidden ? "Show map" : "Hide map";
  }

  function newCard(file) {
    const card = $("#result-template").content.firstElementChild.cloneNode(true);
    const img = $(".photo-img", card);
    img.src = URL.createObjectURL(file);
    img.alt = `The photo ${file.name}`;
    $(".file-name", card).textContent = `${file.name} · ${fileSize(file.size)}`;
    $(".explain-button", card).addEventListener("click", () => explain(card, file));
    $(".overlay-toggle", card).addEventListener("click", () => toggleOverlay(card));
    $("#results").prepend(card);
    $("#results-empty").hidden = true;
    $("#clear-results").hidden = false;
    return card;
  }

  async function review(file) {
    const card = newCard(file);
    try {
      if (!model) await loadModel();
      const form = new FormData();
      form.append("file", file, file.name);
      const { body, serverTiming, roundTrip } = await call("/predict", { method: "POST", body: form });
      showPrediction(card, body, serverTiming, roundTrip);
    } catch (err) {
      $(".verdict", card).textContent = "No verdict";
      card.classList.add("no-verdict");
      showError(card, err.message);
      if (err.status === 401) showKeyStatus(err.message, true);
    }
  }

  async function reviewAll(files) {
    for (const file of Array.from(files)) await review(file); // in order: the service runs one at a time anyway
  }

  function clearResults() {
    for (const img of document.querySelectorAll("#results .photo-img")) URL.revokeObjectURL(img.src);
    $("#results").replaceChildren();
    $("#results-empty").hidden = false;
    $("#clear-results").hidden = true;
    $("#file-input").focus();
  }

  function setUp() {
    $("#key-form").addEventListener("submit", useKey);
    $("#key-forget").addEventListener("click", forgetKey);
    $("#clear-results").addEventListener("click", clearResults);
    const input = $("#file-input");
    input.addEventListener("change", async () => {
      const files = Array.from(input.files);
      input.value = ""; // the same file can be chosen again
      await reviewAll(files);
    });
    const zone = $("#drop-zone");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("is-over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("is-over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("is-over");
      reviewAll(event.dataTransfer.files);
    });
    if (storedKey()) {
      loadModel().catch((err) => {
        if (err.status === 401) sessionStorage.removeItem(KEY_NAME);
        showKeyStatus(err.message, true);
      });
    }
  }

  setUp();
})();
