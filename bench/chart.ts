// A small SVG line chart: throughput (MB/s, log scale) by message size (log scale), one line per series,
// and the loopback single-socket limit as a dashed line.

export interface Point {
  series: string;
  sizeBytes: number;
  bytesPerSec: number;
}

const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function fmtSize(n: number): string {
  return n >= 1 << 20 ? `${n / (1 << 20)} MiB` : n >= 1024 ? `${n / 1024} KiB` : `${n} B`;
}

export function throughputChart(derecho: Point[], etcd: Point[], loopbackBytesPerSec: number | null): string {
  const W = 900;
  const H = 520;
  const left = 70;
  const right = 300;
  const top = 40;
  const bottom = 60;
  const points = [...derecho, ...etcd];
  const sizes = [...new Set(points.map((p) => p.sizeBytes))].sort((a, b) => a - b);
  const values = points.map((p) => p.bytesPerSec / 1e6).concat(loopbackBytesPerSec ? [loopbackBytesPerSec / 1e6] : []).filter((v) => v > 0);
  if (sizes.length === 0 || values.length === 0) return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="80"><text x="10" y="40">no data</text></svg>\n`;
  const yMin = 10 ** Math.floor(Math.log10(Math.min(...values)));
  const yMax = 10 ** Math.ceil(Math.log10(Math.max(...values)));
  const xMin = Math.log10(sizes[0]!);
  const xMax = Math.log10(sizes[sizes.length - 1]!);
  const x = (size: number): number => left + (xMax === xMin ? 0.5 : (Math.log10(size) - xMin) / (xMax - xMin)) * (W - left - right);
  const y = (mbps: number): number => top + (1 - (Math.log10(mbps) - Math.log10(yMin)) / (Math.log10(yMax) - Math.log10(yMin))) * (H - top - bottom);
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${left}" y="22" font-size="15" font-weight="bold">Throughput by message size (MB/s, log scale), loopback, 3 members</text>`);
  for (let v = yMin; v <= yMax * 1.0001; v *= 10) {
    out.push(`<line x1="${left}" x2="${W - right}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`);
    out.push(`<text x="${left - 8}" y="${y(v) + 4}" text-anchor="end">${v >= 1 ? v.toFixed(0) : v.toPrecision(1)}</text>`);
  }
  for (const s of sizes) {
    out.push(`<line x1="${x(s)}" x2="${x(s)}" y1="${top}" y2="${H - bottom}" stroke="#eee"/>`);
    out.push(`<text x="${x(s)}" y="${H - bottom + 18}" text-anchor="middle">${fmtSize(s)}</text>`);
  }
  out.push(`<text x="${(left + W - right) / 2}" y="${H - 15}" text-anchor="middle">message size</text>`);
  const series = [...new Set(points.map((p) => p.series))];
  series.forEach((name, i) => {
    const color = COLORS[i % COLORS.length]!;
    const pts = points.filter((p) => p.series === name && p.bytesPerSec > 0).sort((a, b) => a.sizeBytes - b.sizeBytes);
    const dashed = etcd.some((p) => p.series === name);
    out.push(`<polyline fill="none" stroke="${color}" stroke-width="2"${dashed ? ' stroke-dasharray="2,3"' : ''} points="${pts.map((p) => `${x(p.sizeBytes).toFixed(1)},${y(p.bytesPerSec / 1e6).toFixed(1)}`).join(' ')}"/>`);
    for (const p of pts) out.push(`<circle cx="${x(p.sizeBytes).toFixed(1)}" cy="${y(p.bytesPerSec / 1e6).toFixed(1)}" r="3" fill="${color}"/>`);
    out.push(`<line x1="${W - right + 15}" x2="${W - right + 40}" y1="${top + 10 + i * 20}" y2="${top + 10 + i * 20}" stroke="${color}" stroke-width="2"${dashed ? ' stroke-dasharray="2,3"' : ''}/>`);
    out.push(`<text x="${W - right + 46}" y="${top + 14 + i * 20}">${esc(name)}</text>`);
  });
  if (loopbackBytesPerSec) {
    const ly = y(loopbackBytesPerSec / 1e6);
    out.push(`<line x1="${left}" x2="${W - right}" y1="${ly}" y2="${ly}" stroke="black" stroke-dasharray="8,4"/>`);
    out.push(`<text x="${W - right - 4}" y="${ly - 6}" text-anchor="end">one loopback socket: ${(loopbackBytesPerSec / 1e6).toFixed(0)} MB/s</text>`);
  }
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
