// cvae serve: the page. Plain JavaScript, no libraries, nothing loaded from anywhere but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#2962a8", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6cab", "#e07a5f", "#3d405b",
  "#81b29a", "#f2cc8f", "#5f0f40", "#0f4c5c"];
let runs = [];
let run = null;
let pending = 0;
const latest = {};  // the newest request of each kind: older answers that arrive late are dropped

function busy(delta) {
  pending += delta;
  document.body.dataset.pending = String(pending);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

const errors = {};  // the last failure of each kind of request, kept until that kind succeeds

function showError(kind, message) {
  if (message) errors[kind] = message;
  else delete errors[kind];
  const byMessage = {};  // one line per message: an upload's damage is reported once, not by each request
  const order = ["generate", "decode", "traverse", "reconstruct", "encode", "transfer", "score", "classify"];
  const kinds = Object.keys(errors).sort((a, b) => order.indexOf(a) - order.indexOf(b));
  for (const k of kinds) (byMessage[errors[k]] = byMessage[errors[k]] || []).push(k);
  const box = $("error");
  box.textContent = Object.entries(byMessage).map(([m, kinds]) => `${kinds.join(", ")}: ${m}`).join("\n");
  box.hidden = !box.textContent;
}

async function api(kind, path, body) {
  const ticket = (latest[kind] = (latest[kind] || 0) + 1);
  busy(+1);
  try {
    const init = body === undefined ? {} : body instanceof FormData
      ? { method: "POST", body } : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
    const response = await fetch(path, init);
    const data = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
    if (ticket !== latest[kind]) return undefined;  // a newer request of this kind was made meanwhile: it draws
    if (!response.ok) {
      showError(kind, data.detail || response.statusText);
      return null;
    }
    // an answer with a warning (a condition far outside the training range) keeps it in view, as an error is
    showError(kind, data.warnings && data.warnings.length ? `note: ${data.warnings.join("; ")}` : "");
    return data;
  } catch (e) {
    showError(kind, String(e));
    return null;
  } finally {
    busy(-1);
  }
}

// -- drawing ------------------------------------------------------------------------------------

function imageOf(out, width = 360) {
  const img = el("img", { class: "grid", alt: `${out.n} generated example(s)`, src: `data:image/png;base64,${out.png}` });
  img.addEventListener("load", () => {
    const scale = Math.max(1, Math.floor(width / img.naturalWidth));
    img.style.width = `${img.naturalWidth * scale}px`;
  });
  return img;
}

function extent(seriesSets) {
  let lo = Infinity, hi = -Infinity;
  for (const s of seriesSets.flat(Infinity)) { if (s < lo) lo = s; if (s > hi) hi = s; }
  if (!(hi > lo)) { lo -= 1; hi += 1; }
  return [lo, hi];
}

// One SVG line plot: curves is a list of {values: [C][L], color}; every channel drawn as a line.
function plot(curves, [lo, hi], title, w = 180, h = 70) {
  const s = svg("svg", { class: "plot", width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img" });
  if (title) s.append(Object.assign(svg("title"), { textContent: title }));
  const pad = 3;
  for (const { values, color, width } of curves) {
    for (const channel of values) {
      const n = channel.length;
      const pts = channel.map((v, i) => `${(pad + (i / Math.max(1, n - 1)) * (w - 2 * pad)).toFixed(1)},` +
        `${(h - pad - ((v - lo) / (hi - lo)) * (h - 2 * pad)).toFixed(1)}`).join(" ");
      s.append(svg("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": width || 1.3 }));
    }
  }
  return s;
}

function table(header, rows, textColumns = 0) {
  const t = el("table");
  t.append(el("tr", {}, ...header.map((h, i) => el("th", { class: i < textColumns ? "text" : "", text: h }))));
  for (const r of rows) {
    t.append(el("tr", {}, ...r.map((v, i) => el("td", {
      class: i < textColumns ? "text" : "", text: typeof v === "number" ? fmt(v) : String(v) }))));
  }
  return t;
}

function fmt(v) {
  const a = Math.abs(v);
  return a !== 0 && (a >= 1e5 || a < 1e-3) ? v.toExponential(3) : Number(v.toPrecision(5)).toString();
}

// Examples as the run's kind asks: an image grid, line plots of signals, a table of rows, or a table
// of sequences (molecules with their validity and RDKit-computed properties).
function render(out, labels = [], width = 360) {
  if (out.kind === "image") return imageOf(out, width);
  if (out.kind === "sequence") {
    const lead = labels.length ? ["condition"] : [];
    const props = Object.keys(out.achieved || {});
    const rows = out.strings.map((s, i) => [...(labels.length ? [labels[i]] : []), s,
      ...(out.valid ? [out.valid[i] ? "yes" : "no"] : []),
      ...props.map((p) => (out.achieved[p][i] === null ? "" : out.achieved[p][i]))]);
    return table([...lead, "sequence", ...(out.valid ? ["valid"] : []), ...props.map((p) => `${p} (RDKit)`)],
      rows, lead.length + 1);
  }
  if (out.kind === "signal") {
    const range = extent(out.values);
    return el("div", { class: "plots" }, ...out.values.map((v, i) =>
      plot([{ values: v, color: COLORS[0] }], range, labels[i] || `#${i}`)));
  }
  const lead = labels.length ? ["condition"] : [];
  return table([...lead, ...out.features], out.values.map((r, i) => [...(labels.length ? [labels[i]] : []), ...r]),
    lead.length);
}

function put(id, node) {
  const box = $(id);
  box.replaceChildren(node);
  box.dataset.version = String(Number(box.dataset.version || 0) + 1);
}

// -- conditions -------------------------------------------------------------------------------

function conditionControls(box, prefix, onChange) {
  box.replaceChildren();
  for (const c of run.conditions) {
    const id = `${prefix}-${c.name}`;
    if (c.kind === "categorical") {
      const select = el("select", { id, "data-name": c.name });
      if (prefix === "gen") select.append(el("option", { value: "", text: "every class" }));
      for (const cls of c.classes) select.append(el("option", { value: cls, text: cls }));
      if (prefix === "gen" && c.classes.length) select.value = c.classes[0];
      select.addEventListener("change", onChange);
      box.append(el("label", { for: id }, `${c.name} `, select));
    } else {
      const step = (c.max - c.min) / 200;
      const input = el("input", { id, type: "range", min: c.min, max: c.max, step: step.toPrecision(3),
        value: c.mean, "data-name": c.name });
      const shown = el("output", { text: fmt(c.mean) });
      input.addEventListener("input", () => { shown.textContent = fmt(Number(input.value)); });
      input.addEventListener("change", onChange);
      box.append(el("label", { for: id }, `${c.name} `, input, shown));
    }
  }
}

function conditionOf(box) {
  const out = {};
  for (const node of box.querySelectorAll("[data-name]")) {
    if (node.value !== "") out[node.dataset.name] = node.tagName === "SELECT" ? node.value : Number(node.value);
  }
  return out;
}

function oneClass(condition) {
  // Sliders and the traversal decode one condition: a categorical left "every class" takes its first.
  const out = { ...condition };
  for (const c of run.conditions) if (c.kind === "categorical" && !(c.name in out)) out[c.name] = c.classes[0];
  return out;
}

// -- the sections -----------------------------------------------------------------------------

// Calls fn once the calls stop for ms; a call waiting its turn counts as pending work.
function debounce(fn, ms = 120) {
  let timer = null;
  return (...args) => {
    if (timer === null) busy(+1);
    else clearTimeout(timer);
    timer = setTimeout(async () => {
      timer = null;
      try { await fn(...args); } finally { busy(-1); }
    }, ms);
  };
}

async function generate() {
  const body = { condition: conditionOf($("conditions")), n: Number($("n").value), seed: Number($("seed").value),
    temperature: Number($("temperature").value), draw: $("draw").checked };
  if (run.guidance && run.guidance.available) body.guidance = Number($("guidance").value);
  if (run.steer && run.steer.available) body.steer = Number($("steer").value);
  const out = await api("generate", `/v1/runs/${encodeURIComponent(run.name)}/generate`, body);
  if (out === undefined) return;  // overtaken by a newer request, which draws
  if (!out) {  // failed: no stale samples under the new settings
    put("samples", el("div"));
    $("samples-caption").textContent = "";
    return;
  }
  put("samples", render(out, out.conditions, 420));
  const conds = [...new Set(out.conditions)];
  $("samples-caption").textContent = `${out.n} example(s)` + (conds.length ? ` for ${conds.length > 3 ?
    conds.slice(0, 3).join("; ") + "; ..." : conds.join("; ")}` : "") + `, seed ${out.seed}, temperature ${out.temperature}` +
    (out.guidance ? `, guidance ${out.guidance}` : "") + (out.steer ? `, steered ${out.steer}` : "");
}

const decode = debounce(async () => {
  const values = {};
  for (const s of $("sliders").querySelectorAll("input")) values[s.dataset.dim] = Number(s.value);
  const out = await api("decode", `/v1/runs/${encodeURIComponent(run.name)}/decode`,
    { condition: oneClass(conditionOf($("conditions"))), values });
  if (out !== undefined) put("decoded", out ? render(out, out.conditions, 160) : el("div"));
});

async function traverse() {
  const out = await api("traverse", `/v1/runs/${encodeURIComponent(run.name)}/traverse`,
    { condition: oneClass(conditionOf($("conditions"))), top: Math.min(5, run.latent_dim), steps: 9 });
  if (out === undefined) return;
  if (!out) {
    put("traversal", el("div"));
    return;
  }
  if (out.kind === "signal") {
    const per = out.values.length / out.dims.length;
    const range = extent(out.values);
    const rows = out.dims.map((d, i) => {
      const curves = out.values.slice(i * per, (i + 1) * per).map((v, j) => ({ values: v, color: shade(j / (per - 1)) }));
      return plot(curves, range, `z${d} (KL ${fmt(out.kl[i])}), dark to light: ${out.steps_sd[0]} ... ${out.steps_sd.at(-1)} sd`, 260, 80);
    });
    put("traversal", el("div", { class: "plots" }, ...rows));
  } else if (out.kind === "table" || out.kind === "sequence") {
    const count = out.kind === "table" ? out.values.length : out.strings.length;
    const steps = count / out.dims.length;
    const labels = Array.from({ length: count }, (_, i) => `z${out.dims[Math.floor(i / steps)]} = ${out.steps_sd[i % steps]} sd`);
    put("traversal", render(out, labels));
  } else {
    put("traversal", el("div", {}, render(out, [], 360),
      el("p", { class: "caption", text: out.dims.map((d, i) => `z${d} KL ${fmt(out.kl[i])}`).join(" · ") })));
  }
}

function shade(t) {
  const a = [13, 8, 135], b = [240, 249, 33];  // dark blue to yellow
  return `rgb(${a.map((v, i) => Math.round(v + (b[i] - v) * (Number.isFinite(t) ? t : 0))).join(",")})`;
}

function buildSliders() {
  const box = $("sliders");
  box.replaceChildren();
  for (const d of run.sliders) {
    const kl = run.kl_per_dimension ? ` KL ${fmt(run.kl_per_dimension[d])}` : "";
    const input = el("input", { type: "range", min: "-3", max: "3", step: "0.25", value: "0", id: `z${d}`, "data-dim": d });
    const shown = el("output", { text: "0" });
    input.addEventListener("input", () => { shown.textContent = input.value; decode(); });
    box.append(el("label", { for: `z${d}` }, `z${d}${kl}`, input, shown));
  }
  $("kl-note").textContent = run.kl_note ? `KL ${run.kl_note}.` : "";
}

// -- uploads ----------------------------------------------------------------------------------

async function upload() {
  // a sequence run's strings, typed one a line, go up as a text file; any other run's file as it is
  const file = run.kind === "sequence"
    ? ($("strings").value.trim() ? new Blob([$("strings").value], { type: "text/plain" }) : null)
    : $("file").files[0];
  if (!file) return;
  const form = () => {
    const f = new FormData();
    f.append("file", file);
    const own = run.conditions_computed ? {} : conditionOf($("own-conditions"));  // else RDKit computes them
    f.append("condition", Object.entries(own).map(([k, v]) => `${k}=${v}`).join(","));
    return f;
  };
  const base = `/v1/runs/${encodeURIComponent(run.name)}`;
  hideUploadPanels();  // each panel shows again when its answer for this file arrives: none of the last file's stays
  const jobs = [api("reconstruct", `${base}/reconstruct`, form()).then(showReconstruction),
    api("encode", `${base}/encode`, form()).then(showCode)];
  if (run.conditions.some((c) => c.kind === "categorical")) jobs.push(api("transfer", `${base}/transfer`, form()).then(showTransfer));
  if (run.detector) jobs.push(api("score", `${base}/score`, form()).then(showScore));
  if (run.classifies.length) {
    const f = new FormData();
    f.append("file", file);
    jobs.push(api("classify", `${base}/classify`, f).then(showClasses));
  }
  await Promise.all(jobs);
}

function hideUploadPanels() {
  for (const id of ["score", "reconstruction-panel", "transfer-panel", "encode-panel", "classify-panel"]) $(id).hidden = true;
}

function showReconstruction(out) {
  if (!out) return;
  $("reconstruction-panel").hidden = false;
  const ids = out.ids.map((i) => `#${i}`);
  if (out.input.kind === "sequence") {
    put("reconstruction", table(["id", "input", "reconstruction", "the same"],
      out.input.strings.map((s, i) => [ids[i], s, out.reconstruction.strings[i], out.same[i] ? "yes" : "no"]), 3));
  } else if (out.input.kind === "image") {
    put("reconstruction", el("div", {}, el("p", { class: "caption", text: "input" }), render(out.input, [], 240),
      el("p", { class: "caption", text: "reconstruction" }), render(out.reconstruction, [], 240)));
  } else if (out.input.kind === "signal") {
    const range = extent([out.input.values, out.reconstruction.values]);
    put("reconstruction", el("div", {},
      el("p", { class: "legend" }, el("span", {}, legendMark("#000"), "input"), el("span", {}, legendMark(COLORS[0]), "reconstruction")),
      el("div", { class: "plots" }, ...out.input.values.map((v, i) => plot([{ values: v, color: "#000", width: 1 },
        { values: out.reconstruction.values[i], color: COLORS[0] }], range, ids[i])))));
  } else {
    const rows = [];
    out.input.values.forEach((r, i) => { rows.push([ids[i], "input", ...r]); rows.push([ids[i], "reconstruction", ...out.reconstruction.values[i]]); });
    put("reconstruction", table(["id", "", ...out.input.features], rows, 2));
  }
}

function legendMark(color) {
  const i = el("i");
  i.style.background = color;
  return i;
}

function showTransfer(out) {
  if (!out) return;
  $("transfer-panel").hidden = false;
  const t = out.targets.length;
  if (out.kind === "sequence") {
    put("transfer", table(["id", "input", "target", "decoded"], out.strings.map((s, k) =>
      [`#${out.ids[Math.floor(k / t)]}`, out.input_strings[Math.floor(k / t)], out.targets[k % t], s]), 4));
  } else if (out.kind === "image") {
    put("transfer", el("div", {}, render(out, [], 420),
      el("p", { class: "caption", text: `columns: input, ${out.targets.join(", ")}` })));
  } else if (out.kind === "signal") {
    const range = extent(out.values);
    const plots = [];
    for (let i = 0; i < out.inputs; i++) {
      plots.push(plot(out.values.slice(i * t, (i + 1) * t).map((v, j) => ({ values: v, color: COLORS[j % COLORS.length] })),
        range, `#${out.ids[i]}`, 260, 90));
    }
    put("transfer", el("div", {}, el("p", { class: "legend" }, ...out.targets.map((name, j) =>
      el("span", {}, legendMark(COLORS[j % COLORS.length]), name))), el("div", { class: "plots" }, ...plots)));
  } else {
    const rows = out.values.map((r, k) => [`#${out.ids[Math.floor(k / t)]}`, out.targets[k % t], ...r]);
    put("transfer", table(["id", "target", ...out.features], rows, 2));
  }
}

function showScore(out) {
  if (!out) return;
  const box = $("score");
  box.hidden = false;
  const rows = out.scores.map((s, i) => [`#${out.ids[i]}`, s, out.flags[i] ? "anomaly" : "normal"]);
  const flagged = out.flags.filter(Boolean).length;
  box.replaceChildren(el("h3", { text: "Anomaly score" }),
    el("p", {}, el("span", { class: `flag ${flagged ? "anomaly" : "normal"}`,
      text: out.scores.length === 1 ? (flagged ? "anomaly" : "normal") : `${flagged} of ${out.scores.length} flagged` }),
    ` — ${out.score} score ${out.scores.length === 1 ? fmt(out.scores[0]) + " " : ""}against the run's threshold ` +
      `${fmt(out.threshold)} (flags ${(100 * out.fpr).toFixed(0)}% of held-out normal data)`),
    table(["id", out.score, "flag"], rows, 1));
  box.dataset.version = String(Number(box.dataset.version || 0) + 1);
}

function showClasses(out) {
  if (!out) return;
  $("classify-panel").hidden = false;
  // each input: the most probable class and the next two, with their probabilities
  const rows = out.probs.map((p, i) => {
    const order = p.map((v, k) => k).sort((a, b) => p[b] - p[a]).slice(0, 3);
    return [`#${out.ids[i]}`, ...order.map((k) => `${out.classes[k]} (${(100 * p[k]).toFixed(1)}%)`)];
  });
  const header = ["id", out.attribute, "next", "then"].slice(0, 1 + Math.min(3, out.classes.length));
  const parts = [table(header, rows.map((r) => r.slice(0, header.length)), header.length)];
  if (out.error !== undefined) {
    parts.push(el("p", { class: "caption", text: `error ${(100 * out.error).toFixed(1)}% on the ${out.labelled} ` +
      "inputs with their own label" }));
  }
  put("classify", el("div", {}, ...parts));
}

function showCode(out) {
  if (!out) return;
  $("encode-panel").hidden = false;
  const d = out.mu[0].length;
  const rows = out.mu.map((m, i) => [`#${out.ids[i]}`, ...m.map((v, j) => `${fmt(v)} ± ${fmt(Math.sqrt(out.var[i][j]))}`)]);
  put("encode", table(["id", ...Array.from({ length: d }, (_, j) => `z${j}`)], rows, 1));
}

// -- the run ----------------------------------------------------------------------------------

function showFacts() {
  const m = run.metrics || {};
  const rows = [];
  const s = m.summary || {};
  for (const split of ["train", "val", "test"]) {
    if (s[split]) rows.push([`${split} negative ELBO`, s[split].loss, s[split].reconstruction, s[split].kl]);
  }
  const parts = [];
  if (rows.length) parts.push(table(["nats per example", "loss", "reconstruction", "KL"], rows, 1));
  if (s.epochs !== undefined) parts.push(el("p", { class: "caption", text: `${s.epochs} epochs` +
    (s.seconds_per_epoch ? `, ${fmt(s.seconds_per_epoch)} s per epoch` : "") }));
  if (run.detector) {
    parts.push(el("p", { class: "caption", text: `anomaly detector: ${run.detector.score} score, threshold ` +
      `${fmt(run.detector.threshold)} (${(100 * run.detector.fpr).toFixed(0)}% of held-out normal data above it)` }));
  }
  if (m.eval) parts.push(el("details", {}, el("summary", { text: "eval.json" }), el("pre", { text: JSON.stringify(m.eval, null, 1) })));
  $("metrics").replaceChildren(...parts);
  $("pictures").replaceChildren(...run.pictures.map((p) => el("figure", {},
    el("img", { src: `/v1/runs/${encodeURIComponent(run.name)}/pictures/${encodeURIComponent(p)}`, alt: p, loading: "lazy" }),
    el("figcaption", { text: p }))));
}

function selectRun(name) {
  run = runs.find((r) => r.name === name) || runs[0];
  $("run").value = run.name;
  for (const kind of Object.keys(errors)) showError(kind, "");  // the last run's failures are not this run's
  const shape = run.data_shape.join("×");
  const conds = run.conditions.map((c) => c.kind === "categorical" ? `${c.name} (${c.classes.length} classes)` : `${c.name} (continuous)`);
  $("run-info").textContent = `${run.kind} ${shape}, ${run.latent_dim} latent dimensions, ` +
    (conds.length ? `conditioned on ${conds.join(", ")}` : "no condition (a plain VAE)") + (run.detector ? ", anomaly detector" : "");
  $("n").max = String(run.limits.max_n);
  if (Number($("n").value) > run.limits.max_n) $("n").value = String(run.limits.max_n);
  $("n-out").textContent = $("n").value;
  const guided = Boolean(run.guidance && run.guidance.available);
  $("guidance-control").hidden = !guided;
  $("guidance").value = String(guided ? run.guidance.default : 0);
  $("temperature").value = String(run.codes ? run.codes.temperature : 0.9);  // cvae sample's default for the run
  $("temperature-out").textContent = $("temperature").value;
  $("guidance-out").textContent = $("guidance").value;
  const steered = Boolean(run.steer && run.steer.available);
  $("steer-control").hidden = !steered;
  $("steer").value = String(steered ? run.steer.default : 0);
  $("steer-out").textContent = $("steer").value;
  $("draw-label").textContent = run.kind === "sequence" ? "draw each token at temperature 1 (else 0.5)" : "draw x ~ p(x | z, c)";
  conditionControls($("conditions"), "gen", () => { generate(); decode(); traverse(); });
  conditionControls($("own-conditions"), "own", upload);
  const sequence = run.kind === "sequence";
  $("file-label").hidden = sequence;
  $("strings-label").hidden = $("strings-go").hidden = !sequence;
  $("own-conditions").hidden = Boolean(run.conditions_computed);
  $("upload-help").textContent = sequence
    ? `Sequences as the run was trained on (${run.conditions.length ? "SMILES or text" : "strings"}), one a line ` +
      `(the first ${run.limits.max_rows} are used), encoded with ` +
      (run.conditions_computed ? "their own properties, computed by RDKit" : "the own condition set here") +
      ", reconstructed, moved to other conditions and shown as codes."
    : run.kind === "image"
    ? `An image (PNG or JPEG, resized to ${run.data_shape.slice(1).join("×")}) or a CSV/.npy of examples; ` +
      (run.conditions.length ? "set its own condition above." : "")
    : `A CSV with the training data's columns (${run.features.slice(0, 4).join(", ")}${run.features.length > 4 ? ", ..." : ""}), ` +
      `one example a row (the first ${run.limits.max_rows} rows are used)` + (run.conditions.length ? "; its condition columns, or set them above." : ".");
  hideUploadPanels();
  $("file").value = "";
  buildSliders();
  showFacts();
  const url = new URL(window.location.href);
  url.searchParams.set("run", run.name);
  window.history.replaceState(null, "", url);
  generate();
  decode();
  traverse();
}

async function start() {
  const data = await api("runs", "/v1/runs");
  if (!data) return;
  runs = data.runs;
  $("run").replaceChildren(...runs.map((r) => el("option", { value: r.name, text: r.name })));
  $("run").addEventListener("change", () => selectRun($("run").value));
  $("generate-form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
  for (const id of ["n", "temperature", "guidance", "steer"]) {
    $(id).addEventListener("input", () => { $(`${id}-out`).textContent = $(id).value; });
    $(id).addEventListener("change", generate);
  }
  $("seed").addEventListener("change", generate);
  $("draw").addEventListener("change", generate);
  $("file").addEventListener("change", upload);
  $("strings-go").addEventListener("click", upload);
  selectRun(new URL(window.location.href).searchParams.get("run"));
  document.body.dataset.ready = "1";
}

start();
