// camloc page: upload an image, show the top-5 classes, blend the chosen class's map over
// the picture on a canvas, and recompute the box in the browser when the sliders move.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  result: null,     // the JSON answer of POST /api/explain
  picture: null,    // ImageData of the picture at display size
  maps: [],         // Uint8Array per explained class: the grayscale map (0..255)
  selected: 0,      // index into result.cams
  ruleMoved: false, // the threshold slider was moved: it, not the server's box rule, decides
  luts: {},         // colormap name -> Uint8Array(256 * 3)
};

// ------------------------------------------------------------------ errors and status

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setStatus(text) { $("status").textContent = text; }

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

// ------------------------------------------------------------------ colormaps

async function lut(name) {
  if (!state.luts[name]) {
    const body = await getJSON(`/api/colormaps/${encodeURIComponent(name)}`);
    state.luts[name] = Uint8Array.from(body.lut.flat());
  }
  return state.luts[name];
}

function drawScale(table, threshold) {
  const canvas = $("scale");
  const ctx = canvas.getContext("2d");
  const row = ctx.createImageData(256, canvas.height);
  for (let y = 0; y < canvas.height; y++) {
    for (let x = 0; x < 256; x++) {
      const o = (y * 256 + x) * 4;
      row.data[o] = table[x * 3];
      row.data[o + 1] = table[x * 3 + 1];
      row.data[o + 2] = table[x * 3 + 2];
      row.data[o + 3] = 255;
    }
  }
  ctx.putImageData(row, 0, 0);
  const x = Math.round(threshold * 255);   // where the box threshold sits on the scale
  ctx.fillStyle = "#fff";
  ctx.fillRect(x - 1, 0, 3, canvas.height);
  ctx.fillStyle = "#000";
  ctx.fillRect(x, 0, 1, canvas.height);
}

// ------------------------------------------------------------------ boxes (as camloc.boxes)

// Bounding box [xmin, ymin, xmax, ymax] (pixel edges) of the largest 8-connected component
// of map >= threshold, or null when no pixel passes. Same rule as camloc.boxes_from_map.
function largestComponentBox(map, width, height, threshold) {
  const level = threshold * 255;
  const labels = new Int32Array(width * height);
  const queue = new Int32Array(width * height);
  let best = null;
  let bestArea = 0;
  let label = 0;
  for (let start = 0; start < map.length; start++) {
    if (labels[start] !== 0 || map[start] < level) continue;
    label += 1;
    let head = 0, tail = 0;
    queue[tail++] = start;
    labels[start] = label;
    let x0 = width, y0 = height, x1 = -1, y1 = -1;
    while (head < tail) {
      const p = queue[head++];
      const px = p % width, py = (p - px) / width;
      if (px < x0) x0 = px;
      if (px > x1) x1 = px;
      if (py < y0) y0 = py;
      if (py > y1) y1 = py;
      for (let dy = -1; dy <= 1; dy++) {
        const ny = py + dy;
        if (ny < 0 || ny >= height) continue;
        for (let dx = -1; dx <= 1; dx++) {
          const nx = px + dx;
          if (nx < 0 || nx >= width) continue;
          const q = ny * width + nx;
          if (labels[q] === 0 && map[q] >= level) {
            labels[q] = label;
            queue[tail++] = q;
          }
        }
      }
    }
    if (tail > bestArea) {   // strictly larger: the first of equal components wins, like scipy
      bestArea = tail;
      best = [x0, y0, x1 + 1, y1 + 1];
    }
  }
  return best;
}

// ------------------------------------------------------------------ drawing

function drawBox(ctx, box) {
  const [x0, y0, x1, y1] = box;
  const width = Math.max(2, Math.round(Math.min(ctx.canvas.width, ctx.canvas.height) / 150));
  const rect = [x0 + 0.5, y0 + 0.5, Math.max(0, x1 - x0 - 1), Math.max(0, y1 - y0 - 1)];
  ctx.lineWidth = width + 2;
  ctx.strokeStyle = "#000";
  ctx.strokeRect(...rect);
  ctx.lineWidth = width;
  ctx.strokeStyle = "#fff";
  ctx.strokeRect(...rect);
}

async function redraw() {
  const result = state.result;
  if (!result || !state.picture) return;
  const opacity = parseFloat($("opacity").value);
  if (!state.ruleMoved) $("threshold").value = String(result.levels[state.selected]);
  const threshold = parseFloat($("threshold").value);
  const rule = result.options.threshold;
  $("opacity-value").textContent = opacity.toFixed(2);
  $("threshold-value").textContent = threshold.toFixed(2) +
    (!state.ruleMoved && typeof rule === "string" ? ` (${rule})` : "");
  let table;
  try {
    table = await lut($("colormap").value);
  } catch (error) {
    showError(error.message);
    return;
  }
  drawScale(table, threshold);
  const { width, height } = result.display;
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  const map = state.maps[state.selected];
  const source = state.picture.data;
  const blended = ctx.createImageData(width, height);
  const out = blended.data;
  for (let i = 0, o = 0; i < map.length; i++, o += 4) {
    const c = map[i] * 3;
    out[o] = source[o] * (1 - opacity) + table[c] * opacity + 0.5;
    out[o + 1] = source[o + 1] * (1 - opacity) + table[c + 1] * opacity + 0.5;
    out[o + 2] = source[o + 2] * (1 - opacity) + table[c + 2] * opacity + 0.5;
    out[o + 3] = 255;
  }
  ctx.putImageData(blended, 0, 0);
  const box = largestComponentBox(map, width, height, threshold);
  const target = result.cams[state.selected];
  if (box) {
    drawBox(ctx, box);
    const { scale_x: sx, scale_y: sy } = result.display;
    const original = box.map((v, i) => Math.round(v * (i % 2 ? sy : sx)));
    $("box").textContent = `Box of “${target.label}” at threshold ${threshold.toFixed(2)}: ` +
      `[${original.join(", ")}] (x0, y0, x1, y1 in original pixels)`;
    $("box").dataset.box = JSON.stringify(original);
  } else {
    $("box").textContent = `No pixel of “${target.label}” reaches ${threshold.toFixed(2)}.`;
    $("box").dataset.box = "null";
  }
  canvas.dataset.drawn = String(Date.now());
}

function listClasses() {
  const list = $("predictions");
  list.replaceChildren();
  state.result.cams.forEach((cam, index) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "prediction" + (index === state.selected ? " selected" : "");
    button.dataset.index = String(index);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = cam.label;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `${(cam.score * 100).toFixed(1)}%`;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, cam.score * 100)}%`;
    button.append(label, score, bar);
    button.addEventListener("click", () => {
      state.selected = index;
      listClasses();
      redraw();
    });
    item.append(button);
    list.append(item);
  });
}

// ------------------------------------------------------------------ loading results

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser could not decode a returned picture"));
    image.src = url;
  });
}

function pixels(image, width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(image, 0, 0, width, height);
  return ctx.getImageData(0, 0, width, height);
}

function grayChannel(imageData) {
  const gray = new Uint8Array(imageData.width * imageData.height);
  for (let i = 0; i < gray.length; i++) gray[i] = imageData.data[i * 4];
  return gray;
}

async function show(result) {
  const { width, height } = result.display;
  const [picture, ...maps] = await Promise.all([result.picture, ...result.maps].map(loadImage));
  state.result = result;
  state.picture = pixels(picture, width, height);
  state.maps = maps.map((map) => grayChannel(pixels(map, width, height)));
  state.selected = 0;
  const canvas = $("overlay");
  canvas.width = width;
  canvas.height = height;
  listClasses();
  const record = { ...result };
  for (const key of ["picture", "overlay", "maps"]) delete record[key];
  $("record").textContent = JSON.stringify(record, null, 1);
  await redraw();
}

let latestRequest = 0;

async function explain(blob, name) {
  const request = ++latestRequest;   // a newer upload wins over a slower older one
  clearError();
  setStatus(`explaining ${name}…`);
  const form = new FormData();
  form.append("file", blob, name);
  form.append("topk", "5");
  form.append("overlay", "false");   // the page blends its own overlay
  const wanted = $("class").value.trim();
  if (wanted) form.append("class", wanted);
  if (state.ruleMoved) form.append("threshold", $("threshold").value);  // else the server's rule
  form.append("opacity", $("opacity").value);
  form.append("colormap", $("colormap").value);
  try {
    const response = await fetch("/api/explain", { method: "POST", body: form });
    const body = await response.json().catch(() => ({}));
    if (request !== latestRequest) return;
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    await show(body);
    state.blob = blob;
    state.name = name;
    setStatus(`${name}: ${body.width}×${body.height}, method ${body.method}`);
  } catch (error) {
    if (request !== latestRequest) return;
    setStatus("");
    showError(error.message);
  }
}

// ------------------------------------------------------------------ wiring

async function start() {
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) explain(file, file.name);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) explain(file, file.name);
  });
  $("threshold").addEventListener("input", () => { state.ruleMoved = true; });
  for (const id of ["opacity", "threshold", "colormap"]) $(id).addEventListener("input", redraw);
  $("class").addEventListener("change", () => { if (state.blob) explain(state.blob, state.name); });
  try {
    const model = await getJSON("/api/model");
    $("model-name").textContent = `${model.name} (${model.num_classes} classes)`;
    const samples = await getJSON("/api/samples");
    for (const sample of samples) {
      const button = document.createElement("button");
      button.type = "button";
      button.title = sample.name;
      button.dataset.sample = sample.name;
      const thumb = document.createElement("img");
      thumb.src = sample.url;
      thumb.alt = sample.name;
      button.append(thumb);
      button.addEventListener("click", async () => {
        try {
          const response = await fetch(sample.url);
          if (!response.ok) throw new Error(`sample ${sample.name}: ${response.status}`);
          explain(await response.blob(), sample.url.split("/").pop());
        } catch (error) {
          showError(error.message);
        }
      });
      $("samples").append(button);
    }
    const names = await getJSON("/api/classes");
    $("class-names").replaceChildren(...names.map((n) => Object.assign(document.createElement("option"), { value: n })));
    drawScale(await lut($("colormap").value), parseFloat($("threshold").value));
  } catch (error) {
    showError(`could not reach the server: ${error.message}`);
  }
}

start();
