// vitprobe explorer: every neuron and head of the embedded results, drawn on <canvas>.
// Hand-written for vitprobe, no library and no network. The data sit in the page as
// zlib-compressed little-endian arrays (base64) that the browser's DecompressionStream
// unpacks; layers are 0-based in the data and labelled 1..L here, as in the figures.
(function () {
  "use strict";
  const root = document.getElementById("explorer");
  const $ = (id) => document.getElementById(id);
  const SUB = { attn: "MHA", mlp: "MLP" };

  // ---- data ---------------------------------------------------------------------------
  class NDArray {
    constructor(data, shape) {
      this.data = data;
      this.shape = shape;
      this.strides = [];
      let s = 1;
      for (let i = shape.length - 1; i >= 0; i--) { this.strides[i] = s; s *= shape[i]; }
    }
    offset(idx) {
      let o = 0;
      for (let i = 0; i < idx.length; i++) o += idx[i] * this.strides[i];
      return o;
    }
    // the contiguous block under the leading indices, as a plain Array
    row(...idx) {
      const o = this.offset(idx);
      return Array.from(this.data.subarray(o, o + this.strides[idx.length - 1]));
    }
    at(...idx) { return this.data[this.offset(idx)]; }
  }

  async function unpack(o) {
    const bin = atob(o.z);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    const buf = await new Response(stream).arrayBuffer();
    if (o.a === "f2") return new NDArray(halfToFloat(new Uint16Array(buf)), o.s);
    const T = { f4: Float32Array, f8: Float64Array, u4: Uint32Array, i4: Int32Array,
      u1: Uint8Array }[o.a];
    return new NDArray(new T(buf), o.s);
  }

  // IEEE 754 half precision (numpy float16) to Float32Array
  function halfToFloat(h) {
    const out = new Float32Array(h.length);
    for (let i = 0; i < h.length; i++) {
      const v = h[i], s = v & 0x8000 ? -1 : 1, e = (v >> 10) & 0x1f, f = v & 0x3ff;
      out[i] = e === 0 ? s * Math.pow(2, -14) * (f / 1024)
        : e === 31 ? (f ? NaN : s * Infinity) : s * Math.pow(2, e - 15) * (1 + f / 1024);
    }
    return out;
  }

  async function decode(v) {
    if (Array.isArray(v)) return Promise.all(v.map(decode));
    if (v && typeof v === "object") {
      if (typeof v.z === "string" && v.a && v.s) return unpack(v);
      const out = {};
      for (const [k, x] of Object.entries(v)) out[k] = await decode(x);
      return out;
    }
    return v;
  }

  // ---- plotting -------------------------------------------------------------------------
  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; lo = lo - 1; }
    const raw = (hi - lo) / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
      ticks.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    }
    return ticks;
  }

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "n/a";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
    return Number(v.toPrecision(4)).toString();
  }

  function setup(canvas) {
    const w = +canvas.dataset.w, h = +canvas.dataset.h;
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    canvas.style.width = w + "px";
    canvas.style.height = h + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, w, h);
    ctx.font = "11px sans-serif";
    return { ctx, w, h };
  }

  function message(canvas, title, text) {
    const { ctx, w, h } = setup(canvas);
    ctx.fillStyle = "#222";
    ctx.font = "bold 12px sans-serif";
    ctx.fillText(title, 10, 18);
    ctx.font = "12px sans-serif";
    ctx.fillStyle = "#7a2a2a";
    wrap(ctx, text, 10, h / 2 - 10, w - 20, 16);
    canvas._hover = null;
  }

  function wrap(ctx, text, x, y, width, lh) {
    let line = "";
    for (const word of text.split(" ")) {
      const test = line ? line + " " + word : word;
      if (ctx.measureText(test).width > width && line) {
        ctx.fillText(line, x, y); y += lh; line = word;
      } else line = test;
    }
    if (line) ctx.fillText(line, x, y);
  }

  // series: [{x: [], y: [], color, dash, label, width, marker}]; opts: title, xlabel, ylabel,
  // logy, hlines: [{y, color, label}]
  function lineChart(canvas, series, opts) {
    const { ctx, w, h } = setup(canvas);
    const m = { l: 58, r: 12, t: 24, b: 40 };
    const ty = (v) => (opts.logy ? (v > 0 ? Math.log10(v) : NaN) : v);
    let xs = [], ys = [];
    for (const s of series) {
      if (s.noRange) continue; // drawn, but the axes fit the others
      s.x.forEach((x, i) => {
        const y = ty(s.y[i]);
        if (isFinite(x) && isFinite(y)) { xs.push(x); ys.push(y); }
      });
    }
    for (const l of opts.hlines || []) if (isFinite(ty(l.y))) ys.push(ty(l.y));
    if (!xs.length) { message(canvas, opts.title, "no finite values to draw"); return; }
    let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (opts.ymin !== undefined) y0 = Math.min(y0, opts.ymin);
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    const pad = (y1 - y0) * 0.06 || 0.5;
    y0 -= pad; y1 += pad;
    const px = (x) => m.l + ((x - x0) / (x1 - x0)) * (w - m.l - m.r);
    const py = (y) => h - m.b - ((y - y0) / (y1 - y0)) * (h - m.t - m.b);
    // axes and ticks
    ctx.strokeStyle = "#ccc"; ctx.fillStyle = "#333"; ctx.lineWidth = 1;
    ctx.textAlign = "center";
    for (const t of niceTicks(x0, x1, 6)) {
      ctx.beginPath(); ctx.moveTo(px(t), m.t); ctx.lineTo(px(t), h - m.b); ctx.stroke();
      ctx.fillText(fmt(t), px(t), h - m.b + 13);
    }
    ctx.textAlign = "right";
    for (const t of niceTicks(y0, y1, 5)) {
      ctx.beginPath(); ctx.moveTo(m.l, py(t)); ctx.lineTo(w - m.r, py(t)); ctx.stroke();
      ctx.fillText(opts.logy ? fmt(Math.pow(10, t)) : fmt(t), m.l - 4, py(t) + 4);
    }
    ctx.strokeStyle = "#666";
    ctx.strokeRect(m.l, m.t, w - m.l - m.r, h - m.t - m.b);
    ctx.textAlign = "center";
    ctx.fillText(opts.xlabel || "", m.l + (w - m.l - m.r) / 2, h - 8);
    ctx.save(); ctx.translate(12, m.t + (h - m.t - m.b) / 2); ctx.rotate(-Math.PI / 2);
    ctx.fillText(opts.ylabel || "", 0, 0); ctx.restore();
    ctx.textAlign = "left"; ctx.font = "bold 12px sans-serif";
    ctx.fillText(opts.title || "", m.l, 15);
    ctx.font = "11px sans-serif";
    ctx.save();
    ctx.beginPath(); ctx.rect(m.l, m.t, w - m.l - m.r, h - m.t - m.b); ctx.clip();
    const points = [];
    for (const l of opts.hlines || []) {
      const y = py(ty(l.y));
      if (!isFinite(y)) continue;
      ctx.strokeStyle = l.color || "#999"; ctx.setLineDash([2, 3]); ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(m.l, y); ctx.lineTo(w - m.r, y); ctx.stroke();
    }
    for (const s of series) {
      ctx.strokeStyle = s.color; ctx.fillStyle = s.color; ctx.lineWidth = s.width || 1.5;
      ctx.setLineDash(s.dash || []);
      ctx.beginPath();
      let pen = false;
      s.x.forEach((x, i) => {
        const X = px(x), Y = py(ty(s.y[i]));
        if (!isFinite(X) || !isFinite(Y)) { pen = false; return; }
        if (pen) ctx.lineTo(X, Y); else ctx.moveTo(X, Y);
        pen = true;
        points.push({ X, Y, x, y: s.y[i], label: s.label });
      });
      ctx.stroke();
      if (s.marker) {
        ctx.setLineDash([]);
        s.x.forEach((x, i) => {
          const X = px(x), Y = py(ty(s.y[i]));
          if (isFinite(X) && isFinite(Y)) {
            ctx.beginPath(); ctx.arc(X, Y, 2.5, 0, 2 * Math.PI); ctx.fill();
          }
        });
      }
    }
    ctx.restore();
    ctx.setLineDash([]);
    // legend
    let ly = m.t + 12;
    ctx.textAlign = "right";
    for (const s of [...series, ...(opts.hlines || [])]) {
      if (!s.label) continue;
      ctx.fillStyle = s.color || "#999";
      ctx.fillRect(w - m.r - 8 - ctx.measureText(s.label).width - 18, ly - 5, 12, 3);
      ctx.fillStyle = "#333";
      ctx.fillText(s.label, w - m.r - 8, ly);
      ly += 14;
    }
    canvas._hover = (mx, my) => {
      let best = null, bd = 400;
      for (const p of points) {
        const d = (p.X - mx) ** 2 + (p.Y - my) ** 2;
        if (d < bd) { bd = d; best = p; }
      }
      return best && `${best.label}: ${opts.xname || "x"} ${fmt(best.x)}, ` +
        `${opts.yname || "y"} ${fmt(best.y)}`;
    };
  }

  const MAGMA = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
    [245, 125, 21], [250, 193, 39], [252, 253, 191]];
  function colour(v) {
    if (!isFinite(v)) return "rgb(235,235,235)";
    const t = Math.max(0, Math.min(1, v)) * (MAGMA.length - 1);
    const i = Math.min(Math.floor(t), MAGMA.length - 2), f = t - i;
    const c = MAGMA[i].map((a, k) => Math.round(a + f * (MAGMA[i + 1][k] - a)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  // img[x][y] in 0..1 (NaN: empty column); xt, yt: tick labels at the inner cell borders
  function heatmap(canvas, img, opts) {
    const { ctx, w, h } = setup(canvas);
    const m = { l: 46, r: 8, t: 22, b: 34 };
    const nx = img.length, ny = img[0].length;
    const short = (v) => (isFinite(v) ? Number(v.toPrecision(2)).toString() : "n/a");
    const cw = (w - m.l - m.r) / nx, ch = (h - m.t - m.b) / ny;
    for (let i = 0; i < nx; i++) {
      for (let j = 0; j < ny; j++) {
        ctx.fillStyle = colour(Math.pow(img[i][j], opts.gamma || 1));
        ctx.fillRect(m.l + i * cw, h - m.b - (j + 1) * ch, Math.ceil(cw), Math.ceil(ch));
      }
    }
    ctx.strokeStyle = "#666"; ctx.strokeRect(m.l, m.t, w - m.l - m.r, h - m.t - m.b);
    ctx.fillStyle = "#333"; ctx.textAlign = "center";
    // a few inner bin edges as ticks, spaced so that their labels do not collide
    ctx.font = "10px sans-serif";
    const every = nx <= 4 ? 1 : Math.ceil(nx / 3);
    for (let i = every; i < nx; i += every) {
      ctx.fillText(short(opts.xt[i]), m.l + i * cw, h - m.b + 12);
    }
    ctx.textAlign = "right";
    const everyY = Math.max(1, Math.ceil(ny / 4));
    for (let j = everyY; j < ny; j += everyY) {
      ctx.fillText(short(opts.yt[j]), m.l - 3, h - m.b - j * ch + 4);
    }
    ctx.font = "11px sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(opts.xlabel, m.l + (w - m.l - m.r) / 2, h - 6);
    ctx.textAlign = "left"; ctx.font = "bold 11px sans-serif";
    ctx.fillText(opts.title, m.l, 14);
    canvas._hover = (mx, my) => {
      const i = Math.floor((mx - m.l) / cw), j = Math.floor((h - m.b - my) / ch);
      if (i < 0 || j < 0 || i >= nx || j >= ny) return null;
      return `centre ${fmt(opts.xt[i])}..${fmt(opts.xt[i + 1])}, neighbour ` +
        `${fmt(opts.yt[j])}..${fmt(opts.yt[j + 1])}: ${fmt(img[i][j])} of the column max ` +
        `(${opts.counts[i][j]} images)`;
    };
  }

  function attachHover(canvas) {
    if (canvas._tipped) return;
    canvas._tipped = true;
    const tip = document.createElement("div");
    tip.className = "ex-tip"; tip.style.display = "none";
    canvas.parentNode.appendChild(tip);
    canvas.addEventListener("mousemove", (ev) => {
      const r = canvas.getBoundingClientRect();
      const text = canvas._hover && canvas._hover(ev.clientX - r.left, ev.clientY - r.top);
      if (!text) { tip.style.display = "none"; return; }
      tip.textContent = text; tip.style.display = "block";
      tip.style.left = Math.min(ev.clientX - r.left + 12, r.width - 160) + "px";
      tip.style.top = ev.clientY - r.top + 12 + "px";
    });
    canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  }

  // ---- controls -------------------------------------------------------------------------
  function fill(select, items, keep) {
    const old = keep ? select.value : null;
    select.innerHTML = "";
    for (const [value, text] of items) {
      const o = document.createElement("option");
      o.value = String(value); o.textContent = text; select.appendChild(o);
    }
    if (old !== null && items.some(([v]) => String(v) === old)) select.value = old;
  }

  let models = [];
  const current = () => models[+$("ex-model").value];

  function keptChannels(n, li, si) {
    if (!n.bowtie) return [];
    return n.bowtie.kept.row(li, si).filter((c) => c >= 0);
  }

  function onModel(ev) {
    const first = !ev;
    const mod = current();
    $("ex-model-info").textContent = mod.description || "";
    const n = mod.neurons, hd = mod.heads;
    $("ex-neuron-part").style.display = n ? "" : "none";
    $("ex-head-part").style.display = hd ? "" : "none";
    if (n) {
      fill($("ex-layer"), n.layers.map((l, i) => [i, `${l + 1}`]), true);
      fill($("ex-sublayer"), n.sublayers.map((s, i) => [i, SUB[s] || s]), true);
      onNeuronLayer(null, first);
    }
    if (hd) {
      fill($("ex-hlayer"), hd.layers.map((l, i) => [i, `${l + 1}`]), true);
      fill($("ex-head"), hd.heads.map((x, i) => [i, `${x + 1}`]), true);
      const variants = hd.angles ? hd.angles.variants : [];
      fill($("ex-variant"), variants.map((v, i) => [i, v]), true);
      $("ex-variant").disabled = !variants.length;
      drawHead();
    }
  }

  function onNeuronLayer(ev, first) {
    const n = current().neurons;
    const li = +$("ex-layer").value, si = +$("ex-sublayer").value;
    const kept = keptChannels(n, li, si);
    fill($("ex-channel"), n.channels.map((c, i) => [i, kept.includes(c) ? `${c} \u2605` : `${c}`]),
      !first);
    // open on a channel whose bowties were saved
    if (first && kept.length) $("ex-channel").value = String(n.channels.indexOf(kept[0]));
    drawNeuron();
  }

  // ---- neuron ---------------------------------------------------------------------------
  function drawNeuron() {
    const mod = current(), n = mod.neurons;
    const li = +$("ex-layer").value, si = +$("ex-sublayer").value;
    const ci = +$("ex-channel").value, channel = n.channels[ci];
    const layerLabel = `layer ${n.layers[li] + 1} ${SUB[n.sublayers[si]] || n.sublayers[si]}`;
    const facts = [];
    if (n.kurtosis) facts.push(`median excess kurtosis over positions ${fmt(n.kurtosis.at(li, si, ci))}`);
    // MI against distance
    const canvas = $("ex-mi");
    if (!n.mi) {
      message(canvas, "MI against distance", "no mutual-information results in this run");
    } else {
      const k = n.mi.channels.indexOf(channel);
      const d = n.mi.distance;
      const mean = { x: d, y: n.mi.layer_mean.row(li, si), color: "#888", dash: [5, 3],
        label: "layer mean over channels" };
      const hl = n.mi.null ? [{ y: n.mi.null.at(li, si), color: "#aaa", label: "null level" }] : [];
      if (k < 0) {
        lineChart(canvas, [mean], { title: `${layerLabel}: channel ${channel} has no MI ` +
          "(--mi-channels subset)", xlabel: "distance from the central patch (patches)",
          ylabel: "MI (nats)", xname: "d", yname: "MI", hlines: hl });
      } else {
        const y = n.mi.curve.row(li, si, k);
        facts.push(`MI at distance 1: ${fmt(y[d.indexOf(1)])} nats`);
        lineChart(canvas, [mean, { x: d, y, color: "#1f77b4", label: `channel ${channel}`,
          marker: true, width: 2 }], { title: `${layerLabel}, channel ${channel}: MI with ` +
          "the central neuron", xlabel: "distance from the central patch (patches)",
        ylabel: "MI (nats)", xname: "d", yname: "MI", hlines: hl });
      }
    }
    attachHover(canvas);
    // activation distribution
    const hc = $("ex-hist");
    if (!n.hist) {
      message(hc, "activation distribution", "no histogram results in this run");
    } else {
      const lo = Array.from(n.hist.lower.data), hi = Array.from(n.hist.upper.data);
      const z = lo.map((a, i) => (a + hi[i]) / 2);
      const density = (share) => share.map((p, i) => p / (hi[i] - lo[i]));
      // shares are stored as uint8 codes on a log scale (explorer.log_quantize)
      const unq = (codes) => codes.map((c) => (c > 0 ? Math.pow(10, (c - 1) * 8 / 254 - 8) : 0));
      const share = unq(n.hist.share.row(li, si, ci));
      // the layer's channels pooled, each weighted by its sample count
      const pooled = new Array(z.length).fill(0);
      let ptotal = 0;
      for (let c = 0; c < n.channels.length; c++) {
        const t = n.hist.total.at(li, si, c);
        if (!(t > 0)) continue;
        unq(n.hist.share.row(li, si, c)).forEach((p, i) => { pooled[i] += p * t; });
        ptotal += t;
      }
      const pshare = pooled.map((v) => v / ptotal);
      const normal = z.map((x) => Math.exp(-x * x / 2) / Math.sqrt(2 * Math.PI));
      lineChart(hc, [
        { x: z, y: density(pshare), color: "#999", label: "layer, all channels" },
        { x: z, y: normal, color: "#000", dash: [4, 3], width: 1, label: "standard normal",
          noRange: true },
        { x: z, y: density(share), color: "#ff7f0e", width: 2,
          label: `channel ${channel}` },
      ], { title: `${layerLabel}, channel ${channel}: activation distribution`, logy: true,
        xlabel: "activation (calibration s.d. from the mean)", ylabel: "density (log)",
        xname: "z", yname: "density" });
    }
    attachHover(hc);
    $("ex-neuron-info").textContent = `${mod.label}, ${layerLabel}, channel ${channel}` +
      (facts.length ? ": " + facts.join("; ") : "");
    drawBowties(n, li, si, channel);
  }

  function drawBowties(n, li, si, channel) {
    const box = $("ex-bowties"), info = $("ex-bowtie-info");
    box.innerHTML = "";
    const kept = keptChannels(n, li, si);
    if (!n.bowtie) { info.textContent = "No joint counts in this run's MI results."; return; }
    const k = n.bowtie.kept.row(li, si).indexOf(channel);
    if (k < 0) {
      info.textContent = `Bowties: the run saved joint counts for channel(s) ` +
        `${kept.join(", ") || "none"} of this layer and sublayer only (marked \u2605); ` +
        "pick one of them to see p(neighbour | centre).";
      return;
    }
    info.textContent = "Bowties: p(neighbour | central neuron) on the equal-frequency bins " +
      "of the MI estimator, each column scaled to its maximum (ticks: bin edges in " +
      "activation units); neighbour on the centre's row at distance d.";
    n.bowtie.distances.forEach((d, di) => {
      const wrapDiv = document.createElement("div");
      wrapDiv.className = "ex-plot";
      const c = document.createElement("canvas");
      c.id = `ex-bowtie-${di}`; c.dataset.w = "230"; c.dataset.h = "220";
      wrapDiv.appendChild(c); box.appendChild(wrapDiv);
      const B = n.bowtie.counts.shape[4];
      const counts = [], img = [];
      for (let x = 0; x < B; x++) {
        const col = n.bowtie.counts.row(li, si, k, di, x);
        const top = Math.max(...col);
        counts.push(col);
        img.push(col.map((v) => (top > 0 ? v / top : NaN)));
      }
      heatmap(c, img, { title: `channel ${channel}, d = ${d}`, xlabel: "central neuron",
        xt: n.bowtie.x_edges.row(li, si, k), yt: n.bowtie.y_edges.row(li, si, k, di),
        counts, gamma: 1 });
      attachHover(c);
    });
  }

  // ---- head -----------------------------------------------------------------------------
  function drawHead() {
    const mod = current(), hd = mod.heads;
    const li = +$("ex-hlayer").value, hi = +$("ex-head").value;
    const label = `layer ${hd.layers[li] + 1}, head ${hd.heads[hi] + 1}`;
    const sc = $("ex-spectra");
    const rows = [];
    if (hd.qk) {
      const q = hd.qk;
      const sv = q.singular_value.row(li, hi);
      const scale = $("ex-norm").checked && sv[0] > 0 ? sv[0] : 1;
      const idx = (a) => a.map((_, i) => i + 1);
      const es = q.eig_sym.row(li, hi).map((v) => v / scale);
      const la = q.lambda_asym.row(li, hi).map((v) => v / scale);
      const s = sv.map((v) => v / scale);
      lineChart(sc, [
        { x: idx(es), y: es, color: "#1f77b4", label: "eigenvalues of M_sym", width: 1.6 },
        { x: idx(la), y: la, color: "#d62728", label: "lambda of M_asym", width: 1.6 },
        { x: idx(s), y: s, color: "#2ca02c", label: "singular values of M", width: 1.6 },
      ], { title: `${label}: spectra of M = W_Q W_K^T`, xlabel: "mode (sorted)",
        ylabel: scale === 1 ? "value" : "value / largest singular value", xname: "mode",
        yname: "value" });
      for (const [name, arr] of Object.entries(q.measures)) {
        rows.push([name, arr.at(li, hi), median(arr.row(li))]);
      }
    } else {
      message(sc, `${label}: spectra`, "no query-key weight results (qk) in this run");
    }
    attachHover(sc);
    const ac = $("ex-angles");
    if (hd.angles) {
      const a = hd.angles, vi = +$("ex-variant").value;
      const x = Array.from(a.angle.data);
      lineChart(ac, [
        { x, y: a.baseline.row(li, vi), color: "#999", label: "all patch pairs" },
        { x, y: a.attention.row(li, vi, hi), color: "#9467bd", width: 2,
          label: "weighted by attention" },
      ], { title: `${label}: angles between ${a.variants[vi]} embeddings`,
        xlabel: "angle (degrees)", ylabel: "density (1/degree)", xname: "angle",
        yname: "density", ymin: 0 });
      for (const [name, arr] of Object.entries(a.measures)) {
        rows.push([`${name} (${a.variants[vi]})`, arr.at(li, vi, hi), median(arr.row(li, vi))]);
      }
    } else {
      message(ac, `${label}: angles`, "no attention-angle results in this run");
    }
    attachHover(ac);
    $("ex-measures").innerHTML = "<tr><th>measure</th><th>this head</th>" +
      "<th>layer median over heads</th></tr>" + rows.map(([n, v, m]) =>
      `<tr><td>${n}</td><td>${fmt(v)}</td><td>${fmt(m)}</td></tr>`).join("");
  }

  function median(values) {
    const v = values.filter((x) => isFinite(x)).sort((a, b) => a - b);
    if (!v.length) return NaN;
    const k = Math.floor(v.length / 2);
    return v.length % 2 ? v[k] : (v[k - 1] + v[k]) / 2;
  }

  // ---- start ----------------------------------------------------------------------------
  async function start() {
    try {
      models = await decode(JSON.parse($("explorer-data").textContent));
      fill($("ex-model"), models.map((m, i) => [i, m.label]), false);
      $("ex-model").addEventListener("change", onModel);
      $("ex-layer").addEventListener("change", onNeuronLayer);
      $("ex-sublayer").addEventListener("change", onNeuronLayer);
      $("ex-channel").addEventListener("change", drawNeuron);
      for (const id of ["ex-hlayer", "ex-head", "ex-variant", "ex-norm"]) {
        $(id).addEventListener("change", drawHead);
      }
      onModel();
      $("ex-status").style.display = "none";
      root.dataset.ready = "1";
    } catch (err) {
      $("ex-status").textContent = "The explorer could not start: " + err;
      root.dataset.ready = "error";
      throw err;
    }
  }
  start();
})();
