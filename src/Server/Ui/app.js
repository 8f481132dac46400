// TokenMill playground: a streaming chat over /v1/chat/completions and a live view of the engine fed by
// /v1/engine/events. Plain browser JavaScript, no dependencies. The API key (when the server has one) is kept in
// sessionStorage and sent as a Bearer header; fetch() reads the SSE streams because EventSource cannot send headers.
"use strict";

const $ = id => document.getElementById(id);
const KEY = "tokenmill-api-key";

function headers(json) {
  const h = {};
  const key = sessionStorage.getItem(KEY);
  if (key) h["Authorization"] = "Bearer " + key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

// An API error's message ({"error":{"message"}}), or the status line.
async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return `${response.status}: ${body.error.message}`;
  } catch { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

function needKey(response) {
  const missing = response.status === 401;
  $("auth-needed").hidden = !missing;
  if (missing) $("api-key").focus();
  return missing;
}

// Reads a text/event-stream body and calls onData with each event's data, until the stream ends.
async function readSse(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter(l => l.startsWith("data:")).map(l => l.slice(5).trimStart()).join("\n");
      if (data) onData(data);
    }
  }
}

// ---- chat -------------------------------------------------------------------------------------------------

const conversation = [];
let modelName = null;
let chatAbort = null;

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers(false) });
    if (needKey(r)) { $("model-name").textContent = "API key needed"; return; }
    if (!r.ok) { $("model-name").textContent = await errorText(r); return; }
    const m = (await r.json()).data[0];
    modelName = m.id;
    $("model-name").textContent = `${m.id} · context ${m.max_model_len} tokens`;
  } catch (e) {
    $("model-name").textContent = "server unreachable: " + e.message;
  }
}

async function send(text) {
  conversation.push({ role: "user", content: text });
  addMessage("user", text);
  const out = addMessage("assistant", "");
  out.dataset.state = "streaming";
  for (const id of ["ttft", "tps", "tokens", "finish"]) $(id).textContent = "…";
  $("send").disabled = true;
  $("stop").disabled = false;
  chatAbort = new AbortController();
  const body = {
    messages: conversation,
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: Number($("max-tokens").value) || 128,
    temperature: Number($("temperature").value),
  };
  if (modelName) body.model = modelName;
  const sent = performance.now();
  let first = null, last = null, chunks = 0, usage = null, finish = null, reply = "";
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(true), body: JSON.stringify(body), signal: chatAbort.signal });
    if (!r.ok) {
      needKey(r);
      throw new Error(await errorText(r));
    }
    await readSse(r, data => {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const delta = choice.delta && choice.delta.content;
        if (delta) {
          const now = performance.now();
          if (first === null) { first = now; $("ttft").textContent = `${Math.round(first - sent)} ms`; }
          last = now;
          chunks++;
          reply += delta;
          out.textContent = reply;
          $("messages").scrollTop = $("messages").scrollHeight;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    });
    out.dataset.state = "done";
  } catch (e) {
    out.dataset.state = e.name === "AbortError" ? "done" : "error";
    if (e.name === "AbortError") finish = "stopped";
    else { out.classList.add("error"); out.textContent = (reply ? reply + "\n" : "") + "error: " + e.message; }
  } finally {
    $("send").disabled = false;
    $("stop").disabled = true;
    chatAbort = null;
  }
  if (reply) conversation.push({ role: "assistant", content: reply });
  else conversation.pop();
  const tokens = usage ? usage.completion_tokens : chunks;
  if (first === null) $("ttft").textContent = "–";
  // Decode speed: the tokens after the first over the time they took (TTFT is shown apart).
  $("tps").textContent = tokens > 1 && last > first ? ((tokens - 1) / ((last - first) / 1000)).toFixed(1) : "–";
  $("tokens").textContent = usage ? `${usage.prompt_tokens} + ${usage.completion_tokens}` : String(chunks);
  $("finish").textContent = finish || "–";
}

// ---- engine view ------------------------------------------------------------------------------------------

const FLASH_MS = 1500;
// Request colours: none near the free grey, the cached teal, the shared violet or the eviction red.
const PALETTE = ["#2563eb", "#16a34a", "#ea580c", "#ca8a04", "#0369a1", "#65a30d", "#db2777", "#92400e", "#1e3a8a", "#15803d", "#f97316", "#a16207"];
const COLORS = { f: "#e5e7eb", c: "#5eead4", s: "#6d28d9" };
let frame = null;            // the latest frame from the server
let owners = new Map();      // block -> request ids holding it
let requestColor = new Map();
let nextColor = 0;
const evictedAt = new Map(); // block -> when it was last evicted (performance.now())
const hitAt = new Map();
const rates = [];            // [time ms, tokens/s]
let lastCount = null;        // [time ms, generated tokens] of the previous frame
let layout = null;           // cell geometry of the KV map
let viewAbort = null;

function colorOf(requestId) {
  if (!requestColor.has(requestId)) requestColor.set(requestId, PALETTE[nextColor++ % PALETTE.length]);
  return requestColor.get(requestId);
}

function onFrame(f) {
  const now = performance.now();
  frame = f;
  owners = new Map();
  const live = new Set();
  for (const s of f.sequences) {
    live.add(s.request_id);
    for (const b of s.blocks) {
      const list = owners.get(b);
      if (list) { if (!list.includes(s.request_id)) list.push(s.request_id); } else owners.set(b, [s.request_id]);
    }
  }
  for (const id of [...requestColor.keys()]) if (!live.has(id)) requestColor.delete(id);
  for (const b of f.events.evicted_blocks) evictedAt.set(b, now);
  for (const b of f.events.hit_blocks) hitAt.set(b, now);

  if (lastCount && f.time_ms > lastCount[0]) rates.push([f.time_ms, (f.generated_tokens - lastCount[1]) * 1000 / (f.time_ms - lastCount[0])]);
  lastCount = [f.time_ms, f.generated_tokens];
  while (rates.length && rates[0][0] < f.time_ms - 60000) rates.shift();

  $("running").textContent = f.running;
  $("waiting").textContent = f.waiting;
  // Tokens/s over the last second of frames, so one slow frame does not make the number jump.
  const recent = rates.filter(r => r[0] > f.time_ms - 1000);
  $("engine-tps").textContent = recent.length ? (recent.reduce((a, r) => a + r[1], 0) / recent.length).toFixed(1) : "–";
  const used = f.counts.owned + f.counts.shared;
  $("kv-usage").textContent = `${used} / ${f.num_blocks} (${(100 * used / f.num_blocks).toFixed(1)}%)`;
  $("hit-rate").textContent = (100 * f.prefix_cache_hit_rate).toFixed(1) + "%";
  $("evictions").textContent = f.evictions;
  $("preemptions").textContent = f.preemptions;
  $("kv-shape").textContent = `${f.num_blocks} blocks × ${f.block_size} tokens (${f.kv_cache_dtype}), step ${f.step}`;
  for (const k of ["free", "cached", "owned", "shared"]) $("count-" + k).textContent = f.counts[k];

  const list = $("kv-requests");
  list.replaceChildren(...f.sequences.map(s => {
    const li = document.createElement("li");
    li.dataset.request = s.request_id;
    const sw = document.createElement("i");
    sw.className = "swatch";
    sw.style.background = colorOf(s.request_id);
    li.append(sw, `${s.request_id}${s.index ? " #" + s.index : ""} · ${s.state} · ${s.blocks.length} blocks · ${s.prompt_tokens} + ${s.output_tokens} tokens`);
    return li;
  }));
  draw();
}

function draw() {
  if (!frame) return;
  const now = performance.now();
  for (const [m, name] of [[evictedAt, "evicted"], [hitAt, "hit"]]) {
    for (const [b, t] of m) if (now - t > FLASH_MS) m.delete(b);
    $("count-" + name).textContent = m.size;
  }
  drawMap(now);
  drawChart();
}

function drawMap(now) {
  const canvas = $("kv-map");
  const n = frame.num_blocks;
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  // As large as fits in about 360 px of height, between 3 and 28 px a cell.
  const cell = Math.max(3, Math.min(28, Math.floor(Math.sqrt(width * 360 / n))));
  const cols = Math.max(1, Math.floor(width / cell));
  const rows = Math.ceil(n / cols);
  const height = rows * cell;
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    canvas.style.height = height + "px";
  }
  layout = { cell, cols };
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, width, height);
  const gap = cell >= 6 ? 1 : 0;
  const states = frame.blocks;
  for (let b = 0; b < n; b++) {
    const x = (b % cols) * cell, y = Math.floor(b / cols) * cell;
    const st = states[b];
    g.fillStyle = st === "o" ? colorOf((owners.get(b) || ["?"])[0]) : COLORS[st] || "#000";
    g.fillRect(x, y, cell - gap, cell - gap);
    const flash = evictedAt.has(b) ? "#dc2626" : hitAt.has(b) ? "#f59e0b" : null;
    if (flash) {
      const fade = 1 - (now - (evictedAt.get(b) ?? hitAt.get(b))) / FLASH_MS;
      g.globalAlpha = Math.max(0.25, fade);
      g.strokeStyle = flash;
      g.lineWidth = cell >= 10 ? 2 : 1;
      g.strokeRect(x + g.lineWidth / 2, y + g.lineWidth / 2, cell - gap - g.lineWidth, cell - gap - g.lineWidth);
      g.globalAlpha = 1;
    }
  }
}

function drawChart() {
  const canvas = $("tps-chart");
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = 90;
  if (canvas.width !== Math.round(width * dpr)) { canvas.width = Math.round(width * dpr); canvas.height = Math.round(height * dpr); }
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, width, height);
  const end = frame.time_ms;
  const max = Math.max(10, ...rates.map(r => r[1]));
  g.fillStyle = "#6b7280";
  g.font = "11px system-ui, sans-serif";
  g.fillText(`${max.toFixed(0)} tok/s`, 4, 12);
  g.strokeStyle = "#2563eb";
  g.lineWidth = 1.5;
  g.beginPath();
  rates.forEach(([t, v], i) => {
    const x = width - (end - t) / 60000 * width, y = height - 4 - v / max * (height - 20);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
}

function hover(e) {
  if (!frame || !layout) return;
  const r = $("kv-map").getBoundingClientRect();
  const col = Math.floor((e.clientX - r.left) / layout.cell), row = Math.floor((e.clientY - r.top) / layout.cell);
  const b = row * layout.cols + col;
  if (col >= layout.cols || b < 0 || b >= frame.num_blocks) { $("kv-hover").textContent = "\u00a0"; return; }
  const name = { f: "free", c: "cached prefix (free until evicted)", o: "owned", s: "shared" }[frame.blocks[b]];
  const who = owners.get(b);
  $("kv-hover").textContent = `block ${b}: ${name}${who ? " · " + who.join(", ") : ""}`;
}

async function watchEngine() {
  if (viewAbort) viewAbort.abort();
  const abort = viewAbort = new AbortController();
  while (!abort.signal.aborted) {
    try {
      const r = await fetch("/v1/engine/events?interval_ms=250", { headers: headers(false), signal: abort.signal });
      if (needKey(r)) { $("view-status").textContent = "API key needed"; return; }
      if (!r.ok) throw new Error(await errorText(r));
      $("view-status").textContent = "live";
      await readSse(r, data => onFrame(JSON.parse(data)));
      $("view-status").textContent = "stream ended; reconnecting…";
    } catch (e) {
      if (abort.signal.aborted) return;
      $("view-status").textContent = "disconnected (" + e.message + "); retrying…";
    }
    await new Promise(resolve => setTimeout(resolve, 2000));
  }
}

// ---- wiring -----------------------------------------------------------------------------------------------

window.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem(KEY) || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    loadModel();
    watchEngine();
  });
  $("chat-form").addEventListener("submit", e => {
    e.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || chatAbort) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", e => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => chatAbort && chatAbort.abort());
  $("clear").addEventListener("click", () => { conversation.length = 0; $("messages").replaceChildren(); });
  $("kv-map").addEventListener("mousemove", hover);
  setInterval(draw, 100); // fades the eviction and hit marks between frames
  loadModel();
  watchEngine();
});
