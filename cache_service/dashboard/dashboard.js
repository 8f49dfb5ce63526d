// kvpool dashboard: polls the manager's /api/stats and draws the pool, the prefix
// cache and the workers' load over time; a KV memory calculator over /api/models'
// shapes; a viewer for `kvpool bench` report.json files; CSV export of each view.
// Plain browser JavaScript over Chart.js (Debian's libjs-chart.js, served by the
// manager at /chart.js). window.kvpoolDashboard holds the state, for tests and the console.
'use strict';

const HISTORY_POINTS = 600;
const BLOCK_SIZES = [4, 8, 16, 32, 64, 128, 256];
const GIB = 1024 ** 3;

const state = {
  history: [],  // one derived point per poll
  prev: null,   // the previous /api/stats answer
  askedToken: false,  // the bearer token was asked for (once per page)
  charts: {},
  models: [],
  pool: null,
  calc: null,
  calcRows: [],
  report: null,
  reportRows: [],
  polls: 0,
  timer: null,
  onStats: [],  // more views of each /api/stats answer (cache_size.js)
};
window.kvpoolDashboard = state;

const hasChart = typeof Chart !== 'undefined';
const $ = (id) => document.getElementById(id);

function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const text = Number.isInteger(value) ? String(value) : value.toFixed(2);
  return `${text} ${units[unit]}`;
}

function percent(x) {
  return x === null || !Number.isFinite(x) ? '–' : `${(100 * x).toFixed(1)}%`;
}

const COLORS = ['#3b82f6', '#f59e0b', '#10b981', '#ef4444', '#8b5cf6', '#64748b'];

function lineChart(id, labels, options = {}) {
  if (!hasChart) return null;
  const datasets = labels.map((label, i) => ({
    label,
    data: [],
    borderColor: COLORS[i % COLORS.length],
    backgroundColor: COLORS[i % COLORS.length] + (options.stacked ? '99' : '33'),
    fill: Boolean(options.stacked),
    pointRadius: 0,
    spanGaps: true,
    tension: 0.2,
  }));
  const chart = new Chart($(id), {
    type: options.type || 'line',
    data: { labels: [], datasets },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      scales: {
        x: { title: { display: Boolean(options.xTitle), text: options.xTitle || '' } },
        y: { stacked: Boolean(options.stacked), beginAtZero: true,
             type: options.logY ? 'logarithmic' : 'linear',
             title: { display: Boolean(options.yTitle), text: options.yTitle || '' } },
      },
    },
  });
  state.charts[id] = chart;
  return chart;
}

// ---- Live ----

function delta(now, before, path) {
  if (!before) return null;
  const get = (o) => path.split('.').reduce((v, k) => (v === undefined ? undefined : v[k]), o);
  const d = get(now) - get(before);
  return Number.isFinite(d) && d >= 0 ? d : null;  // a restarted worker resets its counters
}

function derive(s, prev) {
  const dt = prev ? s.time_s - prev.time_s : null;
  const queries = s.prefix_cache.queries_tokens_total;
  const hits = s.prefix_cache.hits_tokens_total;
  const dq = delta(s, prev, 'prefix_cache.queries_tokens_total');
  const dh = delta(s, prev, 'prefix_cache.hits_tokens_total');
  const rate = (d) => (d === null || !dt ? null : d / dt);
  const mean = (sumPath, countPath) => {
    const dc = delta(s, prev, countPath);
    const ds = delta(s, prev, sumPath);
    return dc && ds !== null ? (1000 * ds) / dc : null;
  };
  return {
    time_s: s.time_s,
    free_blocks: s.pool.free_blocks,
    cached_blocks: s.pool.cached_blocks,
    in_use_blocks: s.pool.in_use_blocks,
    usage_ratio: s.pool.usage_ratio,
    hit_rate_total: queries > 0 ? hits / queries : null,
    hit_rate_interval: dq ? (dh || 0) / dq : null,
    evictions_total: s.evictions_total,
    evictions_per_s: rate(delta(s, prev, 'evictions_total')),
    preemptions_per_s: rate(delta(s, prev, 'totals.preemptions_total')),
    requests_running: s.totals.requests_running,
    requests_waiting: s.totals.requests_waiting,
    tokens_per_s: rate(delta(s, prev, 'totals.generated_tokens_total')),
    ttft_ms: mean('totals.ttft_sum_s', 'totals.ttft_count'),
    itl_ms: mean('totals.itl_sum_s', 'totals.itl_count'),
    generated_tokens_total: s.totals.generated_tokens_total,
    workers: s.workers_live,
  };
}

function push(chartId, label, values) {
  const chart = state.charts[chartId];
  if (!chart) return;
  chart.data.labels.push(label);
  values.forEach((v, i) => chart.data.datasets[i].data.push(v));
  if (chart.data.labels.length > HISTORY_POINTS) {
    chart.data.labels.shift();
    chart.data.datasets.forEach((d) => d.data.shift());
  }
  chart.update('none');
}

function renderLive(s, p) {
  $('pool-summary').textContent =
    `${s.pool.model} · ${s.pool.num_blocks} blocks of ${s.pool.block_size} tokens ` +
    `(${formatBytes(s.pool.pool_bytes)}, ${s.pool.backend}) · ${s.workers_live} worker(s)`;
  $('tile-usage').textContent =
    `${s.pool.in_use_blocks} / ${s.pool.num_blocks} (${percent(s.pool.usage_ratio)})`;
  $('tile-hit-rate').textContent = percent(p.hit_rate_total);
  $('tile-evictions').textContent = String(s.evictions_total);
  $('tile-pinned').textContent = `${s.pinned_blocks} in ${s.pins} pin(s)`;
  $('tile-requests').textContent = `${p.requests_running} / ${p.requests_waiting}`;
  $('tile-tokens').textContent = p.tokens_per_s === null ? '–' : p.tokens_per_s.toFixed(1);
  const ms = (v) => (v === null ? '–' : `${v.toFixed(1)} ms`);
  $('tile-latency').textContent = `${ms(p.ttft_ms)} / ${ms(p.itl_ms)}`;
  $('tile-workers').textContent = String(s.workers_live);
  const label = p.time_s.toFixed(1);
  push('chart-blocks', label, [p.in_use_blocks, p.cached_blocks, p.free_blocks]);
  const pct = (v) => (v === null ? null : 100 * v);
  push('chart-hit-rate', label, [pct(p.hit_rate_interval), pct(p.hit_rate_total)]);
  push('chart-evictions', label, [p.evictions_per_s, p.preemptions_per_s]);
  push('chart-requests', label, [p.requests_running, p.requests_waiting]);
  push('chart-latency', label, [p.ttft_ms, p.itl_ms]);
  const tenantBody = document.querySelector('#tenants tbody');
  tenantBody.replaceChildren(...(s.tenants || []).map((t) => {
    const row = document.createElement('tr');
    [t.tenant, t.blocks_in_use, t.max_blocks, t.prefix_hits_tokens_total,
     t.prefix_queries_tokens_total, t.quota_rejections_total, t.pins,
     `${t.pinned_blocks} (${t.max_pinned_blocks})`].forEach((v) => {
      const cell = document.createElement('td');
      cell.textContent = String(v);
      row.appendChild(cell);
    });
    return row;
  }));
  const body = document.querySelector('#workers tbody');
  body.replaceChildren(...s.workers.map((w) => {
    const row = document.createElement('tr');
    [w.id, w.name, w.load.requests_running, w.load.requests_waiting,
     w.load.generated_tokens_total, w.load.preemptions_total,
     `${w.last_heartbeat_age_s.toFixed(1)} s ago`].forEach((v) => {
      const cell = document.createElement('td');
      cell.textContent = String(v);
      row.appendChild(cell);
    });
    return row;
  }));
}

// With a token file the manager answers /api/stats only with a bearer token: asked
// for once, kept for this tab's session.
function authHeaders() {
  const token = sessionStorage.getItem('kvpool-token');
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function poll() {
  try {
    let response = await fetch('/api/stats', { cache: 'no-store', headers: authHeaders() });
    if (response.status === 401 && !state.askedToken) {
      state.askedToken = true;
      const token = window.prompt('This manager needs a bearer token (its token file):');
      if (token) {
        sessionStorage.setItem('kvpool-token', token.trim());
        response = await fetch('/api/stats', { cache: 'no-store', headers: authHeaders() });
      }
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const s = await response.json();
    const point = derive(s, state.prev);
    state.prev = s;
    state.history.push(point);
    if (state.history.length > HISTORY_POINTS) state.history.shift();
    state.polls += 1;
    renderLive(s, point);
    state.onStats.forEach((render) => render(s));
    $('live-status').textContent = '';
  } catch (err) {
    $('live-status').textContent = `cannot reach the manager: ${err.message}`;
  }
}

function startPolling() {
  if (state.timer) clearInterval(state.timer);
  state.timer = setInterval(poll, Number($('poll-interval').value));
  poll();
}

// ---- Calculator ----

function shapeOf(name) {
  return state.models.find((m) => m.name === name);
}

// As `kvpool calc`: 8-bit K/V (int8, fp8) carry one fp32 scale per head vector, as
// kvpool's pool keeps them.
function kvBytesPerToken(m, bits, kvHeads = m.num_kv_heads) {
  const scaleBits = bits === 8 ? 32 : 0;
  return (2 * m.num_layers * kvHeads * (m.head_dim * bits + scaleBits)) / 8;
}

function attentionKind(m) {
  if (!m.num_heads) return 'KV heads only';
  if (m.num_kv_heads === m.num_heads) return `MHA (${m.num_heads} heads)`;
  if (m.num_kv_heads === 1) return `MQA (${m.num_heads} query heads, 1 KV head)`;
  return `GQA (${m.num_heads} query heads, ${m.num_kv_heads} KV heads, groups of ${m.num_heads / m.num_kv_heads})`;
}

function updateCalculator() {
  const m = shapeOf($('calc-model').value);
  if (!m) return;
  const seqInput = $('calc-seq');
  seqInput.max = String(Math.max(m.max_position, 1));
  if (Number(seqInput.value) > m.max_position) seqInput.value = String(m.max_position);
  const bits = Number($('calc-dtype').value);
  const poolBytes = Number($('calc-pool').value) * GIB;
  const block = BLOCK_SIZES[Number($('calc-block').value)];
  const batch = Number($('calc-batch').value);
  const seq = Number(seqInput.value);
  $('calc-pool-out').textContent = $('calc-pool').value;
  $('calc-block-out').textContent = String(block);
  $('calc-batch-out').textContent = String(batch);
  $('calc-seq-out').textContent = String(seq);

  const perToken = kvBytesPerToken(m, bits);
  const blocksPerSeq = Math.ceil(seq / block);
  const perSeq = blocksPerSeq * block * perToken;
  const poolBlocks = Math.floor(poolBytes / (block * perToken));
  const heads = m.num_heads || m.num_kv_heads;
  const variants = {
    mha: kvBytesPerToken(m, bits, heads) * seq * batch,
    gqa8: kvBytesPerToken(m, bits, Math.max(1, Math.floor(heads / 8))) * seq * batch,
    mqa: kvBytesPerToken(m, bits, 1) * seq * batch,
  };
  state.calc = {
    model: m.name, bits, pool_bytes: poolBytes, block_size: block, batch, seq_len: seq,
    kv_bytes_per_token: perToken,
    kv_bytes_per_sequence: perSeq,
    kv_bytes_batch: perSeq * batch,
    sequences_fit_paged: Math.floor(poolBlocks / blocksPerSeq),
    sequences_fit_contiguous: Math.floor(poolBytes / (m.max_position * perToken)),
    variants,
  };
  const c = state.calc;
  $('calc-attention').textContent = attentionKind(m);
  $('calc-per-token').textContent = formatBytes(c.kv_bytes_per_token);
  $('calc-per-seq').textContent = `${formatBytes(c.kv_bytes_per_sequence)} (${blocksPerSeq} blocks)`;
  $('calc-batch-bytes').textContent = `${formatBytes(c.kv_bytes_batch)}` +
    (c.kv_bytes_batch > poolBytes ? ' — more than the pool' : '');
  $('calc-fit-paged').textContent = `${c.sequences_fit_paged} of ${seq} tokens`;
  $('calc-fit-contiguous').textContent =
    `${c.sequences_fit_contiguous} (each reserves ${m.max_position} tokens)`;
  $('calc-variants').textContent =
    `${formatBytes(variants.mha)} / ${formatBytes(variants.gqa8)} / ${formatBytes(variants.mqa)}`;

  const lengths = [];
  for (let n = 128; n < m.max_position; n *= 2) lengths.push(n);
  lengths.push(m.max_position);
  state.calcRows = lengths.map((n) => [n,
    kvBytesPerToken(m, bits, heads) * n * batch,
    kvBytesPerToken(m, bits, Math.max(1, Math.floor(heads / 8))) * n * batch,
    kvBytesPerToken(m, bits, 1) * n * batch,
    perToken * n * batch]);
  const chart = state.charts['chart-calc'];
  if (chart) {
    chart.data.labels = lengths.map(String);
    for (let i = 0; i < 4; i += 1) chart.data.datasets[i].data = state.calcRows.map((r) => r[i + 1] / GIB);
    chart.update('none');
  }
}

async function loadModels() {
  const response = await fetch('/api/models');
  const body = await response.json();
  const reference = body.models.find((m) => m.name === body.pool.model);
  const poolModel = {
    name: `this pool (${body.pool.model})`,
    num_layers: body.pool.num_layers,
    num_heads: reference ? reference.num_heads : 0,
    num_kv_heads: body.pool.num_kv_heads,
    head_dim: body.pool.head_dim,
    max_position: reference ? reference.max_position : 2048,
  };
  state.pool = body.pool;
  state.models = [poolModel, ...body.models];
  $('calc-model').replaceChildren(...state.models.map((m) => new Option(m.name, m.name)));
  updateCalculator();
}

// ---- Bench report ----

function setChart(id, labels, series) {
  const chart = state.charts[id];
  if (!chart) return;
  chart.data.labels = labels;
  series.forEach((values, i) => { chart.data.datasets[i].data = values; });
  chart.update('none');
}

function showReport(report) {
  state.report = report;
  const modes = ['none', 'contiguous', 'paged'];
  const ms = (v) => (Number.isFinite(v) ? v * 1000 : null);
  const rows = [];
  const latency = modes.map((m) => ms(report.modes?.[m]?.avg_token_latency_s));
  const ttft = modes.map((m) => ms(report.modes?.[m]?.ttft_s));
  setChart('chart-report-modes', modes, [latency, ttft]);
  modes.forEach((m, i) => rows.push(['original', m, '', latency[i], ttft[i]]));

  const sweep = report.scenarios?.context_sweep?.points || [];
  setChart('chart-report-sweep', sweep.map((p) => String(p.context)),
    modes.map((m) => sweep.map((p) => ms(p[m]))));
  sweep.forEach((p) => modes.forEach((m) => rows.push(['context_sweep', m, p.context, ms(p[m]), ''])));

  const points = report.scenarios?.throughput?.points || [];
  setChart('chart-report-throughput', points.map((p) => String(p.concurrency)),
    ['contiguous', 'paged'].map((m) => points.map((p) => p[m]?.sustained_tokens_per_s || p[m]?.tokens_per_s || null)));
  points.forEach((p) => ['contiguous', 'paged'].forEach((m) =>
    rows.push(['throughput', m, p.concurrency, p[m]?.sustained_tokens_per_s ?? '', p[m]?.tokens_per_s ?? ''])));

  const sizes = report.scenarios?.cache_size?.pool_sizes || [];
  setChart('chart-report-cache', sizes.map((p) => p.pool_over_working_set.toFixed(2)),
    [sizes.map((p) => 100 * p.hit_rate)]);
  sizes.forEach((p) => rows.push(['cache_size', 'paged', p.pool_over_working_set, p.hit_rate, p.tokens_per_s]));
  state.reportRows = rows;
  $('report-status').textContent =
    `${report.model?.name ?? '?'} on ${report.machine?.cpu_model ?? report.model?.device ?? '?'}, ${report.date ?? ''}`;
}

async function loadReportUrl(url) {
  try {
    const response = await fetch(url);
    showReport(await response.json());
  } catch (err) {
    $('report-status').textContent = `cannot load ${url}: ${err.message}`;
  }
}

// ---- CSV ----

function csvCell(v) {
  const text = v === null || v === undefined ? '' : String(v);
  return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function toCsv(header, rows) {
  return [header, ...rows].map((r) => r.map(csvCell).join(',')).join('\n') + '\n';
}

function download(name, text) {
  const link = document.createElement('a');
  link.href = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
}

state.liveCsv = () => {
  const keys = Object.keys(state.history[0] || {});
  return toCsv(keys, state.history.map((p) => keys.map((k) => p[k])));
};
state.calcCsv = () => toCsv(['seq_len', 'mha_bytes', 'gqa8_bytes', 'mqa_bytes', 'model_bytes'], state.calcRows);
state.reportCsv = () => toCsv(['view', 'mode', 'x', 'value', 'value2'], state.reportRows);

// ---- Wiring ----

function init() {
  $('chart-missing').hidden = hasChart;
  document.querySelectorAll('header nav button').forEach((button) => {
    button.addEventListener('click', () => {
      document.querySelectorAll('header nav button').forEach((b) => b.classList.toggle('active', b === button));
      document.querySelectorAll('.tab').forEach((t) => { t.hidden = t.id !== `tab-${button.dataset.tab}`; });
      Object.values(state.charts).forEach((c) => c && c.resize());
    });
  });
  lineChart('chart-blocks', ['in use', 'cached', 'free'], { stacked: true, xTitle: 'seconds since manager start', yTitle: 'blocks' });
  lineChart('chart-hit-rate', ['per interval', 'all time'], { xTitle: 'seconds', yTitle: '% of prompt tokens' });
  lineChart('chart-evictions', ['evictions/s', 'preemptions/s'], { xTitle: 'seconds', yTitle: 'per second' });
  lineChart('chart-requests', ['running', 'waiting'], { xTitle: 'seconds', yTitle: 'requests' });
  lineChart('chart-latency', ['TTFT', 'inter-token'], { xTitle: 'seconds', yTitle: 'ms' });
  lineChart('chart-calc', ['MHA', 'GQA-8', 'MQA', 'this model'], { xTitle: 'sequence length (tokens)', yTitle: 'GiB' });
  lineChart('chart-report-modes', ['avg latency / token', 'TTFT'], { type: 'bar', logY: true, yTitle: 'ms' });
  lineChart('chart-report-sweep', ['none', 'contiguous', 'paged'], { xTitle: 'context (tokens)', logY: true, yTitle: 'ms per step' });
  lineChart('chart-report-throughput', ['contiguous', 'paged'], { xTitle: 'concurrent requests', yTitle: 'tokens/s' });
  lineChart('chart-report-cache', ['hit rate %'], { xTitle: 'pool / working set', yTitle: '%' });

  ['calc-model', 'calc-dtype', 'calc-pool', 'calc-block', 'calc-batch', 'calc-seq'].forEach((id) => {
    $(id).addEventListener('input', updateCalculator);
    $(id).addEventListener('change', updateCalculator);
  });
  $('poll-interval').addEventListener('change', startPolling);
  $('export-live').addEventListener('click', () => download('kvpool-live.csv', state.liveCsv()));
  $('export-calc').addEventListener('click', () => download('kvpool-kv-memory.csv', state.calcCsv()));
  $('export-report').addEventListener('click', () => download('kvpool-report.csv', state.reportCsv()));
  $('report-file').addEventListener('change', async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    try {
      showReport(JSON.parse(await file.text()));
    } catch (err) {
      $('report-status').textContent = `not a report.json: ${err.message}`;
    }
  });
  const reportUrl = new URLSearchParams(window.location.search).get('report');
  if (reportUrl) loadReportUrl(reportUrl);
  loadModels().catch((err) => { $('calc-attention').textContent = `cannot load models: ${err.message}`; });
  startPolling();
}

init();
