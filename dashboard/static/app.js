/* fedmq dashboard: polls api/state every second and re-renders. Read-only, no external requests.
   Every string from the JSON goes through textContent (device ids are untrusted). */
'use strict';

const POLL_MS = 1000;
const MAX_IDS = 200;            // ids shown per list; the rest is summarised as "+N more"
const $ = (id) => document.getElementById(id);
const charts = {};              // chart id -> {plot, key}
let skew = 0;                   // server clock - local clock, seconds
let deadline = null;            // open round's deadline, server epoch seconds
let lastOk = 0;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fill(parent, children) {
  parent.replaceChildren(...children);
}

function num(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—';
  return digits === undefined ? String(v) : Number(v).toFixed(digits);
}

function len0(a) {
  return Array.isArray(a) ? a.length : 0;
}

function bytes(v) {
  if (v === null || v === undefined) return '—';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return (i === 0 ? String(Math.round(v)) : v.toFixed(v < 10 ? 2 : 1)) + ' ' + units[i];
}

function duration(s) {
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + ' s';
  const m = Math.floor(s / 60);
  return m < 60 ? m + ' min ' + (s % 60) + ' s' : Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
}

/* ---------- header ---------- */

function setBadge(text, cls, title) {
  const b = $('badge');
  b.textContent = text;
  b.className = 'badge ' + cls;
  b.title = title || '';
}

function renderHeader(st) {
  const run = st.run || {};
  $('fleet').textContent = st.fleet || '—';
  $('run-id').textContent = run.id || 'no run seen yet';
  const phase = run.phase || 'waiting';
  $('phase').textContent = phase;
  $('phase').className = 'phase phase-' + phase.replace(/[^a-z]/g, '');
  $('reason').textContent = phase === 'failed' || run.reason ? '— ' + (run.reason || 'no reason given') : '';
  const r = run.round;
  const total = typeof run.rounds === 'number' ? run.rounds : null;
  let round = typeof r === 'number' ? String(r) : '—';
  if (total !== null) round += ' of ' + total;
  if (r === 0) round += ' (statistics)';
  else if (total !== null && r > total) round += ' (final evaluation)';
  $('round').textContent = round;
  $('model-version').textContent = num(run.model_version);
  deadline = typeof run.deadline === 'number' ? run.deadline : null;
  tick();
  if (st.source === 'run') setBadge('finished run', 'badge-run', 'read from a run folder');
  else if (st.connected) setBadge('live', 'badge-live', 'dashboard is connected to the broker');
  else setBadge('disconnected', 'badge-off', 'dashboard has no MQTT link to the broker');
}

function tick() {
  const d = $('deadline');
  if (deadline === null) { d.textContent = '—'; d.className = ''; return; }
  const left = deadline - (Date.now() / 1000 + skew);
  d.textContent = left >= 0 ? 'in ' + duration(left) : 'passed ' + duration(-left) + ' ago';
  d.className = left >= 0 ? '' : 'error';
}

/* ---------- devices, relays, rejections, privacy ---------- */

function idList(title, items) {
  const box = el('div', null, 'idlist');
  box.append(el('h3', title + ' (' + items.length + ')'));
  const ul = el('ul', null, 'ids');
  for (const item of items.slice(0, MAX_IDS)) {
    const li = el('li', item[0]);
    if (item[1]) li.append(el('span', ' ' + item[1], 'muted'));
    ul.append(li);
  }
  if (items.length > MAX_IDS) ul.append(el('li', '+' + (items.length - MAX_IDS) + ' more', 'muted'));
  box.append(ul);
  return box;
}

function renderDevices(st) {
  const dv = st.devices || {};
  const skipped = Object.entries(dv.skipped || {});
  const counts = [['enrolled', num(dv.enrolled)], ['online', num(dv.online)],
    ['expected', len0(dv.expected)], ['reported', len0(dv.reported)], ['waiting', len0(dv.waiting)],
    ['late', len0(dv.late)], ['skipped', skipped.length]];
  fill($('counts'), counts.map(([k, v]) => {
    const div = el('div', null, 'count count-' + k);
    div.append(el('dd', v), el('dt', k));
    return div;
  }));
  const lists = [];
  if (len0(dv.waiting)) lists.push(idList('waiting', dv.waiting.map((id) => [id])));
  if (len0(dv.late)) lists.push(idList('late', dv.late.map((id) => [id])));
  if (skipped.length) lists.push(idList('skipped', skipped));
  fill($('device-lists'), lists);
}

function noneRow() {
  const tr = el('tr');
  const td = el('td', 'none', 'muted');
  td.colSpan = 2;
  tr.append(td);
  return tr;
}

function renderSide(st) {
  const relays = Object.entries(st.relays || {});
  fill($('relays'), relays.length ? relays.map(([name, ids]) => {
    const li = el('li', name + ': ' + len0(ids) + ' device' + (len0(ids) === 1 ? '' : 's'));
    li.title = Array.isArray(ids) ? ids.join(', ') : '';
    return li;
  }) : [el('li', 'none', 'muted')]);

  const rejected = Object.entries(st.rejected || {});
  fill($('rejected').tBodies[0], rejected.length ? rejected.map(([reason, n]) => {
    const tr = el('tr');
    tr.append(el('td', reason), el('td', num(n), 'n'));
    return tr;
  }) : [noneRow()]);

  const ignored = Object.entries(st.ignored || {});
  $('ignored').textContent = ignored.length
    ? 'ignored messages: ' + ignored.map(([r, n]) => r + ' ' + num(n)).join(' · ') : '';

  const p = st.privacy;
  $('privacy-card').hidden = !p;
  if (p) {
    const eps = typeof p.epsilon === 'number' ? p.epsilon : 0;
    const frac = p.budget ? eps / p.budget : 0;
    const bar = $('privacy-fill');
    bar.style.width = Math.min(100, frac * 100).toFixed(1) + '%';
    bar.className = frac >= 1 ? 'over' : frac >= 0.8 ? 'near' : '';
    $('privacy-text').textContent = 'ε ' + num(p.epsilon, 2) + ' spent of ' + num(p.budget, 2) +
      (p.budget ? ' (' + (frac * 100).toFixed(0) + '%)' : '') + ', δ ' + num(p.delta);
  }
}

/* ---------- charts ---------- */

const COLORS = ['#1f6feb', '#d9480f', '#2b8a3e'];

function field(rounds, name) {
  return rounds.map((r) => (typeof r[name] === 'number' ? r[name] : null));
}

function chartSpecs(st) {
  const rounds = Array.isArray(st.rounds) ? st.rounds : [];
  const x = rounds.map((r) => r.round);
  const hasAcc = rounds.some((r) => typeof r.accuracy === 'number');
  const regression = st.task === 'regression' || (!hasAcc && rounds.some((r) => typeof r.r2 === 'number'));
  const wire = rounds.map((r) => (typeof r.update_bytes === 'number' || typeof r.model_bytes === 'number'
    ? (r.update_bytes || 0) + (r.model_bytes || 0) : null));
  return {
    regression,
    // evaluations may be sparse (not every round): their lines span the rounds without one
    'chart-loss': {x, series: [['loss', field(rounds, 'loss')]], fmt: (v) => v.toPrecision(3), span: true},
    'chart-quality': {x, series: regression ? [['R²', field(rounds, 'r2')]]
      : [['accuracy', field(rounds, 'accuracy')], ['balanced accuracy', field(rounds, 'balanced_accuracy')]],
      fmt: (v) => v.toFixed(3), span: true},
    'chart-time': {x, series: [['seconds', field(rounds, 'seconds')]], fmt: (v) => v.toPrecision(2) + ' s'},
    'chart-bytes': {x, series: [['bytes', wire]], fmt: bytes},
  };
}

function makePlot(box, spec) {
  const fmt = (u, v) => (v === null || v === undefined ? '—' : spec.fmt(v));
  const opts = {
    width: Math.max(200, box.clientWidth), height: 220,
    scales: {x: {time: false}},
    axes: [{label: 'round', incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000], values: (u, s) => s.map(String)},
      {values: (u, splits) => splits.map((v) => spec.fmt(v)), size: 70}],
    series: [{label: 'round'}].concat(spec.series.map(([label], i) => ({
      label, stroke: COLORS[i], width: 2, value: fmt, spanGaps: !!spec.span, points: {show: true, size: 5}}))),
  };
  return new uPlot(opts, [spec.x].concat(spec.series.map((s) => s[1])), box);
}

function renderCharts(st) {
  const specs = chartSpecs(st);
  $('quality-title').textContent = specs.regression ? 'R²' : 'Accuracy & balanced accuracy';
  for (const id of ['chart-loss', 'chart-quality', 'chart-time', 'chart-bytes']) {
    const spec = specs[id];
    const box = $(id);
    const key = spec.series.map((s) => s[0]).join('|');
    const data = [spec.x].concat(spec.series.map((s) => s[1]));
    let c = charts[id];
    if (c && c.key !== key) { c.plot.destroy(); c = null; }
    if (!c) {
      box.replaceChildren();
      c = charts[id] = {plot: makePlot(box, spec), key, sig: JSON.stringify(data)};
    } else {
      const sig = JSON.stringify(data);
      if (sig !== c.sig) { c.plot.setData(data); c.sig = sig; }
    }
    box.dataset.points = String(spec.series[0][1].filter((v) => v !== null).length);
  }
}

// Charts follow their container's width (responsive grid, window resizes).
if (typeof ResizeObserver === 'function') {
  const ro = new ResizeObserver((entries) => {
    for (const e of entries) {
      const c = charts[e.target.id];
      const w = Math.floor(e.contentRect.width);
      if (c && w > 0 && Math.abs(c.plot.width - w) > 1) c.plot.setSize({width: w, height: 220});
    }
  });
  ['chart-loss', 'chart-quality', 'chart-time', 'chart-bytes'].forEach((id) => ro.observe($(id)));
}

/* ---------- polling ---------- */

function render(st) {
  if (typeof st.now === 'number') skew = st.now - Date.now() / 1000;
  renderHeader(st);
  renderDevices(st);
  renderSide(st);
  renderCharts(st);
  const run = st.run || {};
  const b = document.body.dataset;
  b.round = run.round === null || run.round === undefined ? '' : String(run.round);
  b.phase = run.phase || '';
  b.rounds = String(Array.isArray(st.rounds) ? st.rounds.length : 0);
  b.ready = '1';
}

function showError(msg) {
  const e = $('error');
  e.hidden = !msg;
  e.textContent = msg || '';
}

async function poll() {
  const ctl = typeof AbortController === 'function' ? new AbortController() : null;
  const timer = ctl && setTimeout(() => ctl.abort(), 5000);
  try {
    const resp = await fetch('api/state', {cache: 'no-store', signal: ctl ? ctl.signal : undefined});
    if (!resp.ok) throw new Error('HTTP ' + resp.status);
    render(await resp.json());
    lastOk = Date.now();
    showError('');
  } catch (err) {
    setBadge('disconnected', 'badge-off', 'the dashboard server does not answer');
    showError('cannot read api/state: ' + (err && err.message ? err.message : err) +
      (lastOk ? ' (last update ' + duration((Date.now() - lastOk) / 1000) + ' ago)' : ''));
  } finally {
    if (timer) clearTimeout(timer);
    setTimeout(poll, POLL_MS);
  }
}

setInterval(tick, 250);
poll();
