// The Live tab's cache-size view: what the prefix hit rate of the live traffic would be
// at another pool size. The manager computes the curve (LRU stack distances of every
// lookup: /api/stats hit_rate_curves, docs/design.md); this draws it with this pool and
// the knee marked, and a slider over pool sizes reads the predicted hit rate and the
// bytes at that size. Loaded after dashboard.js, whose state, helpers and poll it uses.
'use strict';

const cacheSize = { data: null, blockBytes: 0, tenants: [] };
state.cacheSize = cacheSize;

const SLIDER_STEPS = 1000;

// The curve at `blocks`: linear between the sizes given, a line from 0 below the first
// (as HitRateCurves::HitRateAt in the manager).
function curveAt(sizes, rates, blocks) {
  if (!sizes.length) return null;
  if (blocks <= sizes[0]) return (rates[0] * Math.max(blocks, 0)) / sizes[0];
  for (let i = 1; i < sizes.length; i += 1) {
    if (blocks > sizes[i]) continue;
    const f = sizes[i] > sizes[i - 1] ? (blocks - sizes[i - 1]) / (sizes[i] - sizes[i - 1]) : 1;
    return rates[i - 1] + f * (rates[i] - rates[i - 1]);
  }
  return rates[rates.length - 1];
}

// The knee ("sweet spot"): the smallest size from which no doubling of the pool gains
// `minGain` or more (as HitRateCurves::Knee); null when there is none.
function kneeOf(sizes, rates, minGain) {
  const largest = sizes[sizes.length - 1];
  let knee = null;
  for (const size of sizes) {
    if (2 * size > largest) break;
    const gain = curveAt(sizes, rates, 2 * size) - curveAt(sizes, rates, size);
    if (gain >= minGain) knee = null;
    else if (knee === null) knee = size;
  }
  return knee;
}

function selectedCurve() {
  const d = cacheSize.data;
  if (!d) return null;
  const tenant = $('cache-tenant').value;
  const window = $('cache-over').value === 'window';
  return d.curves.find((c) => c.tenant === tenant && c.window === window) || null;
}

// Slider position <-> blocks, log-uniform over the curve's sizes.
function sliderBlocks() {
  const sizes = cacheSize.data.cache_blocks;
  const lo = Math.log(sizes[0]);
  const hi = Math.log(sizes[sizes.length - 1]);
  return Math.max(1, Math.round(Math.exp(lo + ((hi - lo) * Number($('cache-slider').value)) / SLIDER_STEPS)));
}
function sliderPosition(blocks) {
  const sizes = cacheSize.data.cache_blocks;
  const lo = Math.log(sizes[0]);
  const hi = Math.log(sizes[sizes.length - 1]);
  return hi > lo ? Math.round((SLIDER_STEPS * (Math.log(blocks) - lo)) / (hi - lo)) : 0;
}

function updateCacheSize() {
  const d = cacheSize.data;
  const curve = selectedCurve();
  if (!d || !curve || !d.cache_blocks.length) {
    $('cache-readout').textContent = 'no prompt lookups yet';
    return;
  }
  const sizes = d.cache_blocks;
  const blocks = sliderBlocks();
  const predicted = curveAt(sizes, curve.hit_rate, blocks);
  const minGain = Number($('cache-knee-points').value) / 100;
  const knee = kneeOf(sizes, curve.hit_rate, minGain);
  cacheSize.blocks = blocks;
  cacheSize.predicted = predicted;
  cacheSize.knee = knee;
  const sampled = blocks > d.exact_blocks && d.sample_rate < 1 ? ` (sampled at ${(100 * d.sample_rate).toFixed(2)}%)` : '';
  $('cache-readout').textContent =
    `${blocks.toLocaleString()} blocks (${formatBytes(blocks * cacheSize.blockBytes)}, ` +
    `${(blocks / d.pool_blocks).toFixed(2)}x this pool): predicted hit rate ${percent(predicted)}${sampled}`;
  $('cache-knee').textContent = knee === null
    ? 'no knee on this curve yet: every doubling still pays'
    : `knee: ${knee.toLocaleString()} blocks (${formatBytes(knee * cacheSize.blockBytes)}), ` +
      `${percent(curveAt(sizes, curve.hit_rate, knee))}; this pool: ` +
      `${percent(curveAt(sizes, curve.hit_rate, d.pool_blocks))}`;
  const chart = state.charts['chart-cache-size'];
  if (!chart) return;
  const pct = (r) => 100 * r;
  chart.data.datasets[0].data = sizes.map((x, i) => ({ x, y: pct(curve.hit_rate[i]) }));
  chart.data.datasets[1].data = [{ x: d.pool_blocks, y: pct(curveAt(sizes, curve.hit_rate, d.pool_blocks)) }];
  chart.data.datasets[2].data = knee === null ? [] : [{ x: knee, y: pct(curveAt(sizes, curve.hit_rate, knee)) }];
  chart.data.datasets[3].data = [{ x: blocks, y: pct(predicted) }];
  chart.options.scales.x.min = sizes[0];
  chart.options.scales.x.max = sizes[sizes.length - 1];
  chart.update('none');
}

function renderCacheSize(s) {
  const d = s.hit_rate_curves;
  if (!d) return;
  const first = cacheSize.data === null;
  cacheSize.data = d;
  cacheSize.blockBytes = s.pool.block_bytes;
  const tenants = [...new Set(d.curves.map((c) => c.tenant))];
  if (tenants.join('\n') !== cacheSize.tenants.join('\n')) {
    const picker = $('cache-tenant');
    const keep = picker.value;
    picker.replaceChildren(...tenants.map((t) => {
      const option = document.createElement('option');
      option.value = t;
      option.textContent = t === '' ? 'every tenant' : t;
      return option;
    }));
    if (tenants.includes(keep)) picker.value = keep;
    cacheSize.tenants = tenants;
  }
  $('cache-over-window').textContent = `the last ${d.window_seconds} s`;
  if (first) $('cache-slider').value = String(sliderPosition(d.pool_blocks));
  updateCacheSize();
}

// Log-axis labels in plain numbers, at 1, 2 and 5 times a power of ten only.
function plainLogTick(value) {
  const mantissa = Math.round(value / 10 ** Math.floor(Math.log10(value)));
  return [1, 2, 5].includes(mantissa) ? Number(value).toLocaleString() : '';
}

function initCacheSize() {
  $('cache-slider').max = String(SLIDER_STEPS);
  ['cache-slider', 'cache-tenant', 'cache-over', 'cache-knee-points'].forEach((id) => {
    $(id).addEventListener('input', updateCacheSize);
    $(id).addEventListener('change', updateCacheSize);
  });
  state.onStats.push(renderCacheSize);
  if (!hasChart) return;
  const point = (color, radius, label) => ({
    label, data: [], type: 'scatter', borderColor: color, backgroundColor: color, pointRadius: radius,
  });
  state.charts['chart-cache-size'] = new Chart($('chart-cache-size'), {
    type: 'scatter',
    data: {
      datasets: [
        { label: 'predicted hit rate', data: [], showLine: true, pointRadius: 0,
          borderColor: COLORS[0], backgroundColor: COLORS[0] },
        point(COLORS[5], 6, 'this pool'),
        point(COLORS[3], 7, 'knee (sweet spot)'),
        point(COLORS[2], 5, 'slider'),
      ],
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      scales: {
        x: { type: 'logarithmic', title: { display: true, text: 'pool size (blocks, log scale)' },
             ticks: { callback: plainLogTick } },
        y: { min: 0, max: 100, title: { display: true, text: '% of prompt tokens' } },
      },
    },
  });
}

initCacheSize();
