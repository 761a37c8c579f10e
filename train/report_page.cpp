// The fixed parts of the report page (see report.h): its style sheet and the script that draws the panels from the
// page's data (the JSON in the report-data element, made by report.cpp). Plain JavaScript, no library, nothing
// fetched. Every number a table shows sits in an element with data-key (what it is) and data-value (the exact
// value: JavaScript's shortest decimal that reads back as the same double, as in log.jsonl); charts carry their
// points in data-points ("step:value ...") and heatmaps their size in data-rows/data-cols. The body gets
// data-rendered="true" once every panel is drawn.
#include "train/report.h"

namespace tally::train {

const char* report_page_css() {
  return R"css(
:root { --ink: #1d2330; --muted: #5b6475; --line: #d9dde5; --bg: #f6f7f9; --card: #ffffff; --accent: #1f5fbf; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       background: var(--bg); }
main { max-width: 1240px; margin: 0 auto; padding: 18px 22px 60px; }
h1 { font-size: 22px; margin: 4px 0 6px; }
h2 { font-size: 18px; margin: 0 0 4px; }
h3 { font-size: 15px; margin: 18px 0 2px; }
h4 { font-size: 14px; margin: 12px 0 2px; }
p { margin: 4px 0 8px; }
.muted, .what { color: var(--muted); }
.what { max-width: 980px; }
.panel { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px 16px;
         margin: 16px 0; }
.run { border-top: 1px solid var(--line); margin-top: 14px; padding-top: 6px; }
.grid { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: flex-start; }
figure { margin: 6px 0; }
svg.chart { background: #fff; overflow: visible; }
svg.chart .title { font-weight: 600; font-size: 13px; fill: var(--ink); }
svg.chart .axis { stroke: #9aa1ad; stroke-width: 1; }
svg.chart .grid-line { stroke: #eef0f4; stroke-width: 1; }
svg.chart text { font-size: 11px; fill: var(--muted); }
svg.chart .series { fill: none; stroke-width: 1.6; }
svg.chart .hline { stroke: #888; stroke-dasharray: 4 3; stroke-width: 1; }
svg.chart .cursor { stroke: #444; stroke-width: 0.8; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f2f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.this-run td { background: #eef4ff; }
.scroll { max-height: 420px; overflow: auto; border: 1px solid var(--line); display: inline-block; }
.scroll table { margin: 0; }
details { margin: 6px 0; }
summary { cursor: pointer; color: var(--accent); }
.controls { margin: 8px 0; display: flex; gap: 16px; flex-wrap: wrap; align-items: center; }
select { font: inherit; }
.heatmap { display: grid; grid-template-columns: 170px auto; column-gap: 6px; align-items: start; }
.heatmap .labels div { font-size: 10px; height: 12px; line-height: 12px; white-space: nowrap; overflow: hidden;
                       text-overflow: ellipsis; text-align: right; color: var(--muted); }
.heatmap canvas { border: 1px solid var(--line); image-rendering: pixelated; cursor: crosshair; }
.legend-bar { display: flex; align-items: center; gap: 6px; font-size: 11px; color: var(--muted); margin: 2px 0 0 176px; }
.legend-bar canvas { border: 1px solid var(--line); }
.swatch { display: inline-block; width: 14px; height: 3px; vertical-align: middle; margin-right: 4px; }
.note { background: #fff8e6; border: 1px solid #f0dca8; border-radius: 6px; padding: 6px 10px; }
#tip { position: fixed; pointer-events: none; background: rgba(20, 24, 33, 0.93); color: #fff; font-size: 12px;
       padding: 6px 8px; border-radius: 5px; max-width: 460px; z-index: 10; white-space: pre; }
code { font-size: 12.5px; background: #f0f2f6; padding: 0 3px; border-radius: 3px; }
)css";
}

const char* report_page_script() {
  return R"js(
(function () {
  'use strict';
  const DATA = JSON.parse(document.getElementById('report-data').textContent);
  const root = document.getElementById('report');
  const tip = document.getElementById('tip');
  const SVGNS = 'http://www.w3.org/2000/svg';
  const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];

  // ---- elements ----
  function setAttrs(e, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }
  function append(e, kids) {
    for (const k of kids.flat(Infinity))
      if (k !== null && k !== undefined && k !== false) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  function h(tag, attrs, ...kids) { const e = document.createElement(tag); setAttrs(e, attrs); append(e, kids); return e; }
  function s(tag, attrs, ...kids) { const e = document.createElementNS(SVGNS, tag); setAttrs(e, attrs); append(e, kids); return e; }

  // ---- numbers ----
  // exact: the shortest decimal that reads back as the same double (what log.jsonl holds).
  const exact = v => (v === null || v === undefined) ? '' : String(v);
  function short(v) {
    if (v === null || v === undefined || !isFinite(v)) return '–';
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return Number(v.toPrecision(4)).toExponential();
    return String(+v.toPrecision(5));
  }
  const count = v => (v === null || v === undefined) ? '–' : Math.round(v).toLocaleString('en-US');
  const bytes = v => (v === null || v === undefined) ? '–' : count(v) + ' B';
  function human(v) {
    if (v === null || v === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0, x = Math.abs(v);
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
    return (v < 0 ? '-' : '') + (i === 0 ? String(x) : x.toFixed(2)) + ' ' + units[i];
  }
  // A table cell holding a number: data-key says what it is, data-value is exact, the text is for reading.
  function num(key, v, text) {
    return h('td', {class: 'num', 'data-key': key, 'data-value': exact(v), title: exact(v)},
             text !== undefined ? text : short(v));
  }
  function th(...labels) { return labels.map(l => h('th', {class: typeof l === 'object' ? l.cls : null}, typeof l === 'object' ? l.text : l)); }

  // ---- hover ----
  function showTip(ev, text) {
    tip.textContent = text;
    tip.hidden = false;
    const pad = 14, w = tip.offsetWidth, hgt = tip.offsetHeight;
    let x = ev.clientX + pad, y = ev.clientY + pad;
    if (x + w > window.innerWidth) x = ev.clientX - w - pad;
    if (y + hgt > window.innerHeight) y = ev.clientY - hgt - pad;
    tip.style.left = x + 'px';
    tip.style.top = y + 'px';
  }
  function hideTip() { tip.hidden = true; }

  // ---- axes ----
  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(st => st >= raw);
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
    return out;
  }
  // Powers of ten when the range spans two or more; else 1, 2, 5 times them; else evenly spaced.
  function logTicks(lo, hi) {
    const within = ms => {
      const out = [];
      for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++)
        for (const m of ms) { const t = m * Math.pow(10, e); if (t >= lo && t <= hi) out.push(+t.toPrecision(6)); }
      return out;
    };
    for (const ms of [[1], [1, 2, 5]]) { const out = within(ms); if (out.length >= 3) return out; }
    return niceTicks(lo, hi, 4).filter(t => t > 0);
  }
  // [min, max] of an array of numbers (a loop: spreading 10^5 arguments into Math.min can overflow the stack).
  function extent(values) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
    return [lo, hi];
  }
  function lowerBound(points, x) {  // first index with step >= x
    let a = 0, b = points.length;
    while (a < b) { const m = (a + b) >> 1; if (points[m][0] < x) a = m + 1; else b = m; }
    return a;
  }

  // A line chart. series: [{name, key, color, dash, markers, points: [[step, value], ...]}]; hlines: [{y, label}].
  function lineChart(o) {
    // The legend under the title, in as many rows as it needs; the plot starts below it.
    const W = 560, L = 64, R = 14, B = 36, legend = [];
    let lx = 4, ly = 28;
    for (const sr of o.series) {
      const w = 32 + 6.5 * sr.name.length;
      if (lx > 4 && lx + w > W) { lx = 4; ly += 13; }
      legend.push({sr, x: lx, y: ly});
      lx += w;
    }
    const T = ly + 20, H = T + 186 + B, pw = W - L - R, ph = H - T - B;
    const svgEl = s('svg', {class: 'chart', width: W, height: H, viewBox: `0 0 ${W} ${H}`, 'data-chart': o.key,
                            role: 'img', 'aria-label': o.title});
    svgEl.append(s('text', {x: 4, y: 14, class: 'title', text: o.title}));
    for (const {sr, x, y} of legend)
      svgEl.append(s('line', {x1: x, x2: x + 14, y1: y - 4, y2: y - 4, stroke: sr.color, 'stroke-width': 2.5,
                              'stroke-dasharray': sr.dash ? '5 3' : null}), s('text', {x: x + 18, y, text: sr.name}));
    const pts = o.series.flatMap(sr => sr.points);
    if (!pts.length) {
      svgEl.append(s('text', {x: L + pw / 2, y: T + ph / 2, 'text-anchor': 'middle', text: 'nothing logged'}));
      return h('figure', {}, svgEl);
    }
    let [x0, x1] = extent(pts.map(p => p[0]));
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    const ys = pts.map(p => p[1]).concat((o.hlines || []).map(l => l.y));
    let [y0, y1] = extent(ys);
    const yMin = y0;
    const logY = !!o.logY && y0 > 0;
    if (logY) { y0 = Math.log10(y0); y1 = Math.log10(y1); }
    if (y1 === y0) { const d = logY ? 0.5 : Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const padY = (y1 - y0) * 0.05;
    y0 -= padY; y1 += padY;
    if (!logY && yMin >= 0 && y0 < 0) y0 = 0;
    const X = x => L + (x - x0) / (x1 - x0) * pw;
    const Y = y => T + ph - ((logY ? Math.log10(y) : y) - y0) / (y1 - y0) * ph;
    const yt = logY ? logTicks(Math.pow(10, y0), Math.pow(10, y1)) : niceTicks(y0, y1, 5);
    for (const t of yt) {
      svgEl.append(s('line', {class: 'grid-line', x1: L, x2: L + pw, y1: Y(t), y2: Y(t)}),
                   s('text', {x: L - 5, y: Y(t) + 4, 'text-anchor': 'end', text: short(t)}));
    }
    for (const t of niceTicks(x0, x1, 6).filter(t => Number.isInteger(t))) {
      svgEl.append(s('line', {class: 'axis', x1: X(t), x2: X(t), y1: T + ph, y2: T + ph + 4}),
                   s('text', {x: X(t), y: T + ph + 16, 'text-anchor': 'middle', text: count(t)}));
    }
    svgEl.append(s('line', {class: 'axis', x1: L, x2: L + pw, y1: T + ph, y2: T + ph}),
                 s('line', {class: 'axis', x1: L, x2: L, y1: T, y2: T + ph}),
                 s('text', {x: L + pw, y: H - 4, 'text-anchor': 'end', text: 'step'}),
                 s('text', {x: 4, y: T - 4, text: (o.yLabel || '') + (logY ? ' (log scale)' : '')}));
    for (const l of o.hlines || []) {
      svgEl.append(s('line', {class: 'hline', x1: L, x2: L + pw, y1: Y(l.y), y2: Y(l.y)}),
                   s('text', {x: L + pw - 2, y: Y(l.y) - 3, 'text-anchor': 'end', text: l.label}));
    }
    for (const sr of o.series) {
      if (!sr.points.length) continue;
      svgEl.append(s('polyline', {class: 'series', stroke: sr.color, 'stroke-dasharray': sr.dash ? '5 3' : null,
                                  points: sr.points.map(p => X(p[0]).toFixed(2) + ',' + Y(p[1]).toFixed(2)).join(' '),
                                  'data-series': sr.key, 'data-points': sr.points.map(p => p[0] + ':' + exact(p[1])).join(' ')}));
      if (sr.markers || sr.points.length === 1)
        for (const p of sr.points) svgEl.append(s('circle', {cx: X(p[0]), cy: Y(p[1]), r: 2.6, fill: sr.color}));
    }
    const cursor = s('line', {class: 'cursor', x1: 0, x2: 0, y1: T, y2: T + ph, visibility: 'hidden'});
    const hit = s('rect', {x: L, y: T, width: pw, height: ph, fill: 'transparent'});
    svgEl.append(cursor, hit);
    hit.addEventListener('mousemove', ev => {
      const box = svgEl.getBoundingClientRect();
      const step = x0 + (ev.clientX - box.left - L) / pw * (x1 - x0);
      const lines = [];
      let at = null;
      for (const sr of o.series) {
        if (!sr.points.length) continue;
        let i = lowerBound(sr.points, step);
        if (i > 0 && (i === sr.points.length || step - sr.points[i - 1][0] < sr.points[i][0] - step)) i--;
        const p = sr.points[i];
        if (at === null) at = p[0];
        lines.push(`${sr.name}: step ${p[0]}  ${exact(p[1])}`);
      }
      cursor.setAttribute('x1', X(at)); cursor.setAttribute('x2', X(at)); cursor.setAttribute('visibility', 'visible');
      showTip(ev, lines.join('\n'));
    });
    hit.addEventListener('mouseleave', () => { hideTip(); cursor.setAttribute('visibility', 'hidden'); });
    return h('figure', {}, svgEl);
  }

  // Horizontal bars: groups [{label, bars: [{name, value, color}]}], values in bytes.
  function barChart(o) {
    const rows = o.groups.reduce((n, g) => n + g.bars.length, 0);
    const barH = 13, gap = 8, L = 170, W = 560, pw = W - L - 110;
    const H = 40 + rows * barH + o.groups.length * gap;
    const svgEl = s('svg', {class: 'chart', width: W, height: H, viewBox: `0 0 ${W} ${H}`, 'data-chart': o.key, role: 'img',
                            'aria-label': o.title});
    svgEl.append(s('text', {x: 4, y: 14, class: 'title', text: o.title}));
    const max = Math.max(1, extent(o.groups.flatMap(g => g.bars.map(b => b.value || 0)))[1]);
    let y = 30;
    for (const g of o.groups) {
      svgEl.append(s('text', {x: L - 6, y: y + barH * g.bars.length / 2 + 4, 'text-anchor': 'end', text: g.label}));
      for (const b of g.bars) {
        const w = Math.max(0, (b.value || 0) / max * pw);
        const r = s('rect', {x: L, y: y, width: w, height: barH - 2, fill: b.color, 'data-value': exact(b.value)});
        r.addEventListener('mousemove', ev => showTip(ev, `${g.label} — ${b.name}: ${bytes(b.value)} (${human(b.value)})`));
        r.addEventListener('mouseleave', hideTip);
        svgEl.append(r, s('text', {x: L + w + 4, y: y + barH - 4, text: `${b.name} ${human(b.value)}`}));
        y += barH;
      }
      y += gap;
    }
    return h('figure', {}, svgEl);
  }

  // ---- heatmaps ----
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function colour(t) {
    t = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(t)), f = t - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(',')})`;
  }
  // rows: [{label, values}] over the columns' buckets (first/last/count: steps and records of each).
  function heatmap(o) {
    // At most 380 px wide on the page: with more columns than that the canvas (one pixel a column) is scaled down.
    const cols = o.cols.first.length, cellW = Math.max(1, Math.min(24, Math.floor(380 / Math.max(1, cols))));
    const rowH = 12, W = cellW * cols, H = rowH * o.rows.length;
    const finite = o.rows.flatMap(r => r.values).filter(v => v !== null && isFinite(v) && (!o.log || v > 0));
    const [lo, hi] = finite.length ? extent(finite) : [0, 1];
    const f = v => o.log ? Math.log10(v) : v;
    const t = v => hi > lo ? (f(v) - f(lo)) / (f(hi) - f(lo)) : 0.5;
    const canvas = h('canvas', {width: W, height: H, style: `width:${Math.min(W, 380)}px;height:${H}px`, 'data-heatmap': o.key, 'data-rows': o.rows.length, 'data-cols': cols,
                                'data-min': exact(finite.length ? lo : null), 'data-max': exact(finite.length ? hi : null)});
    const ctx = canvas.getContext('2d');
    o.rows.forEach((r, i) => r.values.forEach((v, j) => {
      ctx.fillStyle = v === null || !isFinite(v) || (o.log && v <= 0) ? '#e4e6eb' : colour(t(v));
      ctx.fillRect(j * cellW, i * rowH, cellW, rowH);
    }));
    canvas.addEventListener('mousemove', ev => {
      const box = canvas.getBoundingClientRect();
      const j = Math.floor((ev.clientX - box.left) / box.width * cols), i = Math.floor((ev.clientY - box.top) / box.height * o.rows.length);
      if (i < 0 || j < 0 || i >= o.rows.length || j >= cols) return hideTip();
      const first = o.cols.first[j], last = o.cols.last[j], n = o.cols.count[j];
      const steps = first === last ? `step ${first}` : `steps ${first}–${last} (${n} logged)`;
      showTip(ev, `${o.rows[i].label}\n${steps}\n${o.title}: ${exact(o.rows[i].values[j])}`);
    });
    canvas.addEventListener('mouseleave', hideTip);
    const bar = h('canvas', {width: 160, height: 10});
    const bctx = bar.getContext('2d');
    for (let x = 0; x < 160; x++) { bctx.fillStyle = colour(x / 159); bctx.fillRect(x, 0, 1, 10); }
    return h('figure', {class: 'heatmap-figure'},
      h('h4', {}, o.title),
      h('div', {class: 'heatmap'}, h('div', {class: 'labels'}, o.rows.map(r => h('div', {title: r.label}, r.label))), canvas),
      h('div', {class: 'legend-bar'}, short(finite.length ? lo : null), bar, short(finite.length ? hi : null), o.log ? '(log scale)' : ''),
      h('div', {class: 'legend-bar'}, `columns: steps ${o.cols.first[0]}–${o.cols.last[cols - 1]}; grey: not logged`));
  }

  // ---- panels ----
  function panel(id, title, intro) {
    return h('section', {class: 'panel', 'data-panel': id, id: id}, h('h2', {}, title), intro ? h('p', {class: 'what'}, intro) : null);
  }
  function sub(id, title, what) {
    return h('div', {class: 'sub', 'data-panel': id}, h('h3', {}, title), h('p', {class: 'what'}, what));
  }
  const runColour = i => COLORS[i % COLORS.length];

  function header() {
    const runs = DATA.runs;
    const sec = h('section', {class: 'panel', 'data-panel': 'runs'},
      h('h1', {}, 'tally report'),
      h('p', {class: 'muted'}, `${runs.length} run${runs.length > 1 ? 's' : ''}, from each run directory's log.jsonl and config.json. Hover over a chart for exact values; the tables hold the same numbers.`));
    const tbl = h('table', {}, h('tr', {}, th('run', 'directory', 'optimizer', {text: 'peak lr', cls: 'num'}, 'model',
      {text: 'parameters', cls: 'num'}, 'batch × seq × accumulation', {text: 'steps logged', cls: 'num'}, '--log-optim', 'device')));
    runs.forEach((r, i) => {
      const c = r.config || {};
      tbl.append(h('tr', {'data-run': r.name},
        h('td', {}, h('span', {class: 'swatch', style: `background:${runColour(i)}`}), r.name), h('td', {}, h('code', {}, r.dir)),
        h('td', {}, c.optimizer || '?'), num(`run/${r.name}/lr`, c.lr),
        h('td', {}, c.model || '?'), num(`run/${r.name}/parameters`, c.parameters, count(c.parameters)),
        h('td', {}, c.batch ? `${c.batch} × ${c.seq} × ${c.accumulation}` : '?'),
        num(`run/${r.name}/steps`, r.summary.steps, `${count(r.summary.steps)}${c.steps ? ' of ' + count(c.steps) : ''}`),
        h('td', {}, c.log_optim === undefined ? '?' : c.log_optim ? `every ${c.log_optim}` : 'off'), h('td', {}, c.device ? `${c.device} ${c.dtype}` : '?')));
    });
    sec.append(tbl);
    // How the page was made smaller.
    const notes = [];
    for (const r of runs) {
      const ds = Object.entries(r.series).filter(([, v]) => v.downsampled).map(([k, v]) => `${k} ${count(v.count)} → ${v.points.length} points`);
      if (ds.length) notes.push(`${r.name}: ${ds.join(', ')}.`);
      if (r.internals && r.internals.downsampled)
        notes.push(`${r.name}: internals, ${count(r.internals.records)} logged steps in ${r.internals.first.length} buckets of ${r.internals.per_bucket} (each bucket's mean; for a minimum its minimum, for a maximum its maximum; for clipping the fraction clipped; 6 significant digits).`);
      if (r.summary.repeated_records) notes.push(`${r.name}: ${r.summary.repeated_records} records of steps logged again by a resumed run are shown once (the first).`);
      if (r.summary.incomplete_last_line) notes.push(`${r.name}: the last line of log.jsonl is unfinished (the run was stopped while writing it) and is left out.`);
      if (r.summary.unknown_records) notes.push(`${r.name}: ${r.summary.unknown_records} records of a kind this page does not know are left out.`);
    }
    sec.append(h('p', {'data-key': 'downsampling'}, notes.length
      ? 'Downsampled when the page was written (a training series keeps at most ' + DATA.max_points + ' points: of each of ' + DATA.max_points / 2 + ' buckets of steps, its lowest and highest): '
      : 'Every logged step is shown: nothing was downsampled (a training series longer than ' + DATA.max_points + ' steps would keep the lowest and highest point of each of ' + DATA.max_points / 2 + ' buckets).'));
    if (notes.length) sec.append(h('ul', {}, notes.map(n => h('li', {}, n))));
    return sec;
  }

  function pts(r, k) { return r.series[k] ? r.series[k].points : []; }

  function trainingPanel() {
    const runs = DATA.runs;
    const sec = panel('training', 'Training', 'Per step, as log.jsonl records it: the training loss (solid) and validation loss (dashed, at each evaluation), the learning rate of the schedule, the global gradient norm before clipping (the dashed line is --grad-clip: above it the gradients were scaled down to it), and throughput.');
    const grid = h('div', {class: 'grid'});
    const lossSeries = [];
    runs.forEach((r, i) => {
      lossSeries.push({name: `${r.name} train`, key: `${r.name}/loss`, color: runColour(i), points: pts(r, 'loss')});
      if (pts(r, 'val_loss').length)
        lossSeries.push({name: `${r.name} val`, key: `${r.name}/val_loss`, color: runColour(i), dash: true, markers: true, points: pts(r, 'val_loss')});
    });
    grid.append(lineChart({title: 'Loss', yLabel: 'cross-entropy (nats)', key: 'loss', series: lossSeries}));
    const each = (k) => runs.map((r, i) => ({name: r.name, key: `${r.name}/${k}`, color: runColour(i), points: pts(r, k)}));
    grid.append(lineChart({title: 'Learning rate', yLabel: 'lr', key: 'lr', series: each('lr')}));
    const clips = [...new Set(runs.map(r => r.summary.grad_clip).filter(c => c > 0))];
    grid.append(lineChart({title: 'Gradient norm (before clipping)', yLabel: '‖g‖₂', key: 'grad_norm', logY: true, series: each('grad_norm'),
                           hlines: clips.map(c => ({y: c, label: `--grad-clip ${c}`}))}));
    grid.append(lineChart({title: 'Throughput', yLabel: 'tokens/s', key: 'tokens_per_s', series: each('tokens_per_s')}));
    sec.append(grid);
    const tbl = h('table', {'data-table': 'training'}, h('tr', {}, th('run', {text: 'steps', cls: 'num'}, {text: 'final loss', cls: 'num'},
      {text: 'lowest loss', cls: 'num'}, {text: 'at step', cls: 'num'}, {text: 'final val loss', cls: 'num'}, {text: 'at step', cls: 'num'},
      {text: 'final lr', cls: 'num'}, {text: 'grad-clipped steps', cls: 'num'}, {text: 'skipped steps', cls: 'num'},
      {text: 'mean tokens/s (after step 1)', cls: 'num'})));
    runs.forEach(r => {
      const m = r.summary, k = `training/${r.name}`;
      tbl.append(h('tr', {'data-run': r.name}, h('td', {}, r.name), num(`${k}/steps`, m.steps, count(m.steps)),
        num(`${k}/final_loss`, m.final_loss), num(`${k}/min_loss`, m.min_loss), num(`${k}/min_loss_step`, m.min_loss_step, count(m.min_loss_step)),
        num(`${k}/final_val_loss`, m.final_val_loss), num(`${k}/final_val_step`, m.final_val_step, count(m.final_val_step)),
        num(`${k}/final_lr`, m.final_lr),
        num(`${k}/grad_clipped_steps`, m.grad_clipped_steps, m.grad_clipped_steps === undefined ? '–' : `${count(m.grad_clipped_steps)} of ${count(m.steps)}`),
        num(`${k}/skipped`, m.skipped, count(m.skipped) + (m.skipped ? ` (steps ${m.skipped_steps.join(', ')})` : '')),
        num(`${k}/mean_tokens_per_s`, m.mean_tokens_per_s, count(m.mean_tokens_per_s))));
    });
    sec.append(tbl);
    return sec;
  }

  // ---- optimizer internals ----
  const WHAT = {
    update: 'RMS(u) of CAME\'s normalised update u = g · rsqrt(r / mean(r)) · rsqrt(c) (u = g · rsqrt(v) for a vector) before the clip u = u / max(1, RMS(u) / clip_threshold), and after it; a step is clipped when RMS(u) > clip_threshold.',
    moment: 'RMS of CAME\'s first moment m = b1 m + (1 − b1) u, the moving average of the clipped update (not of g), and of the change lr · update actually applied to the parameter.',
    confidence: 'CAME\'s confidence factors from the instability (u − m)² + eps2, whose row and column moving averages are R and C: per row rsqrt(R / mean(R)), per column rsqrt(C), and their product, the scale that multiplies m in update = m · rsqrt(R / mean(R)) · rsqrt(C) (large where updates agree with m, small where they are unstable). Each cell is the mean over the tensor\'s rows, columns or elements.',
    error: 'The factored second moment\'s error ‖V_factored − V_exact‖_F / ‖V_exact‖_F, where V_factored = r c / mean(r) stands for the exact moving average V of g² + eps1.',
  };
  const FIELD_LABEL = {
    update_rms: 'update RMS before clip', clipped_update_rms: 'update RMS after clip', clipped: 'fraction of steps clipped',
    exp_avg_rms: 'first-moment RMS', applied_rms: 'applied step RMS (lr · update)',
    'confidence_row.mean': 'row factor rsqrt(R / mean R), mean', 'confidence_col.mean': 'column factor rsqrt(C), mean',
    'confidence_scale.mean': 'scale (row × column factor), mean', 'confidence_scale.min': 'scale, min', 'confidence_scale.max': 'scale, max',
    'confidence_row.min': 'row factor, min', 'confidence_row.max': 'row factor, max', 'confidence_col.min': 'column factor, min', 'confidence_col.max': 'column factor, max',
  };

  // Rows of a heatmap: each tensor, or each layer (the mean over its tensors).
  function heatRows(tensors, field, byLayer) {
    const withField = tensors.filter(t => t.series[field]);
    if (!byLayer) return withField.map(t => ({label: t.param, values: t.series[field]}));
    const layers = [];
    const index = new Map();
    for (const t of withField) {
      if (!index.has(t.layer)) { index.set(t.layer, layers.length); layers.push({label: t.layer, members: []}); }
      layers[index.get(t.layer)].members.push(t.series[field]);
    }
    return layers.map(l => ({label: `${l.label} (${l.members.length})`, values: l.members[0].map((_, j) => {
      const vs = l.members.map(m => m[j]).filter(v => v !== null);
      return vs.length ? vs.reduce((a, b) => a + b, 0) / vs.length : null;
    })}));
  }
  function tensorSeries(it, t, field) {
    const v = t.series[field];
    if (!v) return [];
    return v.map((x, j) => [it.first[j], x]).filter(p => p[1] !== null);
  }

  function internalsRun(r, i) {
    const it = r.internals, c = r.config || {};
    const box = h('div', {class: 'run', 'data-run': r.name}, h('h3', {}, `${r.name}`));
    const opt = c.optimizer || '?';
    box.append(h('p', {class: 'muted'}, `${opt}: ${count(it.records)} logged steps (--log-optim ${c.log_optim || '?'}), ${it.tensors.length} tensors. ` +
      (it.downsampled ? `Downsampled into ${it.first.length} buckets of ${it.per_bucket} logged steps.` : 'Every logged step is shown exactly.') +
      (opt !== 'came' ? ` The sentences below describe CAME; for ${opt} the same fields mean what docs/optimizers.md ("Seeing inside a step") says.` : '')));
    const state = {byLayer: true, tensor: it.tensors[0].param};
    const layerSel = h('select', {'data-control': 'rows'}, h('option', {value: 'layer'}, 'rows: layers (mean of their tensors)'),
                       h('option', {value: 'tensor'}, 'rows: tensors'));
    const tensorSel = h('select', {'data-control': 'tensor'}, it.tensors.map(t => h('option', {value: t.param}, t.param)));
    box.append(h('div', {class: 'controls'}, layerSel, h('label', {}, 'curves of tensor ', tensorSel)));
    const body = h('div', {});
    box.append(body);
    const threshold = c.flags && c.flags['clip-threshold'] !== undefined ? Number(c.flags['clip-threshold']) : null;
    const anyConfidence = it.tensors.some(t => t.series['confidence_scale.mean']);
    function draw() {
      body.textContent = '';
      const t = it.tensors.find(x => x.param === state.tensor);
      const cols = {first: it.first, last: it.last, count: it.count};
      const hm = (field, log) => {
        const rows = heatRows(it.tensors, field, state.byLayer);
        if (!rows.length) return h('p', {class: 'muted'}, `${FIELD_LABEL[field]}: not recorded by ${opt}.`);
        return heatmap({title: FIELD_LABEL[field], key: `${r.name}/${field}`, cols, log, rows});
      };
      const upd = sub('internals-update', 'Update RMS and the clip', WHAT.update);
      upd.append(h('div', {class: 'grid'},
        lineChart({title: `${t.param}: update RMS`, key: `${r.name}/update/${t.param}`, yLabel: 'RMS', logY: true,
                   hlines: threshold && t.series.clipped_update_rms ? [{y: threshold, label: `clip_threshold ${threshold}`}] : [],
                   series: [{name: 'before clip', key: `${r.name}/${t.param}/update_rms`, color: COLORS[0], points: tensorSeries(it, t, 'update_rms')},
                            {name: 'after clip', key: `${r.name}/${t.param}/clipped_update_rms`, color: COLORS[1], dash: true, points: tensorSeries(it, t, 'clipped_update_rms')}]}),
        h('div', {}, hm('update_rms', true), hm('clipped', false))));
      const mom = sub('internals-moment', 'First moment and the applied step', WHAT.moment);
      mom.append(h('div', {class: 'grid'},
        lineChart({title: `${t.param}: first moment and step`, key: `${r.name}/moment/${t.param}`, yLabel: 'RMS', logY: true,
                   series: [{name: 'first moment m', key: `${r.name}/${t.param}/exp_avg_rms`, color: COLORS[2], points: tensorSeries(it, t, 'exp_avg_rms')},
                            {name: 'applied lr · update', key: `${r.name}/${t.param}/applied_rms`, color: COLORS[3], points: tensorSeries(it, t, 'applied_rms')}]}),
        hm('exp_avg_rms', true)));
      const conf = sub('internals-confidence', 'Confidence factors', WHAT.confidence);
      if (anyConfidence) {
        const cgrid = h('div', {class: 'grid'});
        conf.append(cgrid);
        if (t.series['confidence_scale.mean'])
          cgrid.append(lineChart({title: `${t.param}: confidence scale over elements`, key: `${r.name}/confidence/${t.param}`, yLabel: 'scale', logY: true,
            series: ['min', 'mean', 'max'].map((k, j) => ({name: k, key: `${r.name}/${t.param}/confidence_scale.${k}`, color: COLORS[4 + j], dash: k !== 'mean',
                                                           points: tensorSeries(it, t, `confidence_scale.${k}`)}))}));
        else cgrid.append(h('p', {class: 'muted'}, `${t.param} has no confidence factors (a vector, or a tensor left unfactored).`));
        cgrid.append(h('div', {}, hm('confidence_row.mean', true), hm('confidence_col.mean', true), hm('confidence_scale.mean', true)));
      } else {
        conf.append(h('p', {class: 'note', 'data-key': `internals/${r.name}/confidence`}, `No tensor of this run has confidence factors: only CAME computes them, for its factored tensors.`));
      }
      const err = sub('internals-factored-error', 'Factored second moment against the exact one', WHAT.error);
      err.append(h('p', {class: 'note', 'data-logged': 'false'}, 'Not in log.jsonl: --log-optim records the statistics of the logged steps only, and the exact V needs an extra f32 copy of every factored parameter, updated at every step from step 1 (Inspect::factored_error in docs/optimizers.md), which is too costly to keep on during training.'));
      body.append(upd, mom, conf, err);
    }
    layerSel.addEventListener('change', () => { state.byLayer = layerSel.value === 'layer'; draw(); });
    tensorSel.addEventListener('change', () => { state.tensor = tensorSel.value; draw(); });
    draw();
    // The table: every tensor's last logged values and how often it was clipped, exact.
    const fields = ['update_rms', 'clipped_update_rms', 'exp_avg_rms', 'applied_rms', 'confidence_row.mean', 'confidence_col.mean', 'confidence_scale.mean'];
    const tbl = h('table', {'data-table': `internals/${r.name}`}, h('tr', {}, th('tensor', 'layer', {text: 'steps logged', cls: 'num'},
      {text: 'clipped', cls: 'num'}, {text: 'last step', cls: 'num'}, ...fields.map(f => ({text: FIELD_LABEL[f], cls: 'num'})))));
    for (const t of it.tensors) {
      const k = `internals/${r.name}/${t.param}`;
      tbl.append(h('tr', {}, h('td', {}, t.param), h('td', {}, t.layer), num(`${k}/records`, t.records, count(t.records)),
        num(`${k}/clipped`, t.clipped, `${count(t.clipped)} (${(100 * t.clipped / t.records).toFixed(1)}%)`),
        num(`${k}/last_step`, t.last_step, count(t.last_step)), fields.map(f => num(`${k}/last/${f}`, t.last[f]))));
    }
    box.append(h('h4', {}, 'Per tensor: how often the clip fired, and the last logged step\'s values'), h('div', {class: 'scroll'}, tbl));
    return box;
  }

  function internalsPanel() {
    const sec = panel('internals', 'Optimizer internals', 'What --log-optim N records every N steps for each tensor: the update before and after CAME\'s RMS clip, the first moment, the applied step, and CAME\'s confidence factors; curves for one tensor, heatmaps of layer (or tensor) × step.');
    const withInternals = DATA.runs.filter(r => r.internals);
    if (!withInternals.length)
      sec.append(h('p', {class: 'note', 'data-key': 'internals/none'}, 'No run here logged its optimizer\'s internals: train with --log-optim N to record them every N steps (e.g. --log-optim 10; a run of fewer than N steps records none).'));
    DATA.runs.forEach((r, i) => { if (r.internals) sec.append(internalsRun(r, i)); });
    return sec;
  }

  // ---- memory ----
  const CATEGORIES = [['parameters', 'parameter', 'parameters'], ['gradients', 'gradient', 'gradients (peak)'],
                      ['optimizer_state', 'optimizer_state', 'optimizer state'], ['activations', 'activation', 'activations (peak)'],
                      ['workspace', 'workspace', 'workspace (peak)'], ['other', 'other', 'inputs and other (peak)']];

  function memoryRun(r, i) {
    const box = h('div', {class: 'run', 'data-run': r.name}, h('h3', {}, r.name));
    const c = r.config || {};
    const logged = r.memory && r.memory.memory;
    const predicted = logged ? r.memory.memory.predicted : (c.plan || null);
    const measured = logged ? r.memory.memory.measured : null;
    const ledger = sub('memory-ledger', 'The ledger by category: predicted and measured', 'Every byte tally allocates is counted by category and owner (bytes requested); the prediction is the same training step run on the meta device, which allocates nothing, and the measurement is the ledger after the run\'s first step. A data-parallel run adds what each step hands to the collectives: bytes, and how many calls (one rank\'s, planned and counted).');
    if (r.memory && !logged)
      ledger.append(h('p', {class: 'note'}, `This log records the totals only (predicted ${bytes(r.memory.memory_predicted)}, measured ${bytes(r.memory.memory_measured)}): it was written before tally logged the categories.`));
    if (!predicted) {
      ledger.append(h('p', {class: 'note'}, c.error || 'No memory figures for this run.'));
      box.append(ledger);
    } else {
      if (!measured)
        ledger.append(h('p', {class: 'note', 'data-key': `memory/${r.name}/measured`}, `Not measured: ${r.memory ? '' : 'log.jsonl has no memory record (runs on a GPU log none: cuBLAS\'s and the caching allocator\'s memory are outside the plan). '}The predicted column is this page's plan for the run's configuration.`));
      const tbl = h('table', {'data-table': `memory/${r.name}`}, h('tr', {}, th('category', {text: 'predicted', cls: 'num'}, {text: 'measured', cls: 'num'}, {text: 'difference', cls: 'num'}, {text: '', cls: 'num'})));
      // fmt: bytes (with their binary-unit reading beside) or count (collectives).
      const row = (label, key, p, m, indent, fmt = bytes) => tbl.append(h('tr', {}, h('td', {}, indent ? '\u2003' + label : label),
        num(`memory/${r.name}/${key}/predicted`, p, fmt(p)), measured ? num(`memory/${r.name}/${key}/measured`, m, fmt(m)) : h('td', {class: 'num'}, '–'),
        measured ? num(`memory/${r.name}/${key}/difference`, m - p, fmt(m - p)) : h('td', {class: 'num'}, '–'), h('td', {class: 'num muted'}, fmt === bytes ? human(p) : '')));
      for (const [field, , label] of CATEGORIES) {
        row(label, field, predicted[field], measured && measured[field]);
        if (field === 'optimizer_state')
          for (const kind of Object.keys(predicted.state_by_kind || {}))
            row(kind, `state/${kind}`, predicted.state_by_kind[kind], measured && (measured.state_by_kind || {})[kind] || 0, true);
      }
      row('total (peak, all at once)', 'total', predicted.total, measured && measured.total);
      row('total held (64-byte blocks)', 'total_held', predicted.total_held, measured && measured.total_held);
      if (r.comm) {
        row('communication per step', 'comm', r.comm.comm_bytes_predicted, measured && r.comm.comm_bytes_measured);
        if (r.comm.collectives_predicted !== undefined)
          row('collectives per step', 'collectives', r.comm.collectives_predicted, measured && r.comm.collectives_measured, true, count);
      }
      ledger.append(h('div', {class: 'grid'}, tbl, barChart({title: 'By category', key: `${r.name}/memory`, groups: CATEGORIES.map(([field, , label]) => ({label,
        bars: [{name: 'predicted', value: predicted[field], color: COLORS[0]}].concat(measured ? [{name: 'measured', value: measured[field], color: COLORS[2]}] : [])}))})));
      box.append(ledger);
      // By owner: every tensor (parameters, their gradients, each optimizer state), module (activations) or buffer.
      const owners = sub('memory-owners', 'The ledger by owner', 'Each owner\'s peak in its category: a parameter, its gradient (":grad"), each of its optimizer states (":exp_avg", ...), a module\'s activations, a workspace; peaks of different owners need not coincide, so they need not add up to the category\'s peak.');
      for (const [, cat, label] of CATEGORIES) {
        const p = (predicted.owners || {})[cat] || {}, m = measured ? (measured.owners || {})[cat] || {} : null;
        const names = [...new Set(Object.keys(p).concat(m ? Object.keys(m) : []))].sort();
        if (!names.length) continue;
        const t = h('table', {'data-table': `memory/${r.name}/owners/${cat}`}, h('tr', {}, th('owner', {text: 'predicted', cls: 'num'}, {text: 'measured', cls: 'num'}, {text: 'difference', cls: 'num'})));
        for (const n of names) {
          const k = `memory/${r.name}/owner/${cat}/${n}`;
          t.append(h('tr', {}, h('td', {}, n), num(`${k}/predicted`, p[n] || 0, bytes(p[n] || 0)),
            m ? num(`${k}/measured`, m[n] || 0, bytes(m[n] || 0)) : h('td', {class: 'num'}, '–'),
            m ? num(`${k}/difference`, (m[n] || 0) - (p[n] || 0), bytes((m[n] || 0) - (p[n] || 0))) : h('td', {class: 'num'}, '–')));
        }
        owners.append(h('details', {}, h('summary', {}, `${label}: ${names.length} owner${names.length > 1 ? 's' : ''}`), h('div', {class: 'scroll'}, t)));
      }
      box.append(owners);
    }
    // Every registered optimizer's state for this model.
    const cmp = sub('memory-optimizers', 'Optimizer state of every optimizer, for this model', 'The state each optimizer tally registers would keep for this run\'s model, predicted from the parameters\' shapes with the run\'s settings for one process (the same prediction tally memory prints), and the training step\'s peak with it; CAME keeps m plus row and column factors, AdamW two full-size moments, Adafactor the factors (and m, unless --no-adafactor-beta1).');
    if (!c.optimizers) {
      cmp.append(h('p', {class: 'note'}, c.error || 'No configuration: no prediction.'));
    } else {
      const opts = c.optimizers.filter(o => !o.error);
      const kinds = [...new Set(opts.flatMap(o => Object.keys(o.state_by_kind)))];
      const tbl = h('table', {'data-table': `optimizers/${r.name}`}, h('tr', {}, th('state', ...opts.map(o => ({text: o.name + (o.this_run ? ' (this run)' : ''), cls: 'num'})))));
      for (const kind of kinds)
        tbl.append(h('tr', {}, h('td', {}, kind), opts.map(o => num(`optimizers/${r.name}/${o.name}/kind/${kind}`, o.state_by_kind[kind] || 0, bytes(o.state_by_kind[kind] || 0)))));
      tbl.append(h('tr', {}, h('td', {}, h('b', {}, 'optimizer state')), opts.map(o => num(`optimizers/${r.name}/${o.name}/state_bytes`, o.state_bytes, bytes(o.state_bytes)))));
      tbl.append(h('tr', {}, h('td', {}, 'step peak (total)'), opts.map(o => num(`optimizers/${r.name}/${o.name}/total`, o.total, bytes(o.total)))));
      cmp.append(h('div', {class: 'grid'}, tbl, barChart({title: 'Optimizer state', key: `${r.name}/optimizers`,
        groups: opts.map((o, j) => ({label: o.name + (o.this_run ? ' (this run)' : ''), bars: [{name: 'state', value: o.state_bytes, color: COLORS[j % COLORS.length]}]}))})));
      for (const o of c.optimizers.filter(o => o.error)) cmp.append(h('p', {class: 'note'}, `${o.name}: ${o.error}`));
      const params = opts.length ? Object.keys(opts[0].tensors) : [];
      const pt = h('table', {'data-table': `optimizers/${r.name}/tensors`}, h('tr', {}, th('parameter', ...opts.map(o => ({text: o.name, cls: 'num'})))));
      for (const p of params)
        pt.append(h('tr', {}, h('td', {}, p), opts.map(o => num(`optimizers/${r.name}/${o.name}/tensor/${p}`, o.tensors[p], bytes(o.tensors[p])))));
      cmp.append(h('details', {}, h('summary', {}, `by tensor: ${params.length} parameters`), h('div', {class: 'scroll'}, pt)));
    }
    box.append(cmp);
    return box;
  }

  function memoryPanel() {
    const sec = panel('memory', 'Memory', 'tally\'s ledger: what one training step holds, by category and by owner, as predicted before the run and as measured after its first step; and the state each registered optimizer would keep for the same model.');
    DATA.runs.forEach((r, i) => sec.append(memoryRun(r, i)));
    return sec;
  }

  root.append(header(), trainingPanel(), internalsPanel(), memoryPanel());
  document.body.setAttribute('data-rendered', 'true');
})();
)js";
}

}  // namespace tally::train
