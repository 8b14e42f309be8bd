// Small SVG charts drawn here (no library, no CDN): line charts for losses and monitoring, bars for counts.
const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2"];

function svg(tag, attrs = {}) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function text(x, y, content, attrs = {}) {
  const t = svg("text", { x, y, "font-size": 11, fill: "#475569", ...attrs });
  t.textContent = content;
  return t;
}

const fmt = (v) => (Math.abs(v) >= 1000 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toPrecision(3));

/** series: [{name, points: [[x, y], ...]}] -> an <svg> with axes, one path per series and a legend. */
export function lineChart(series, { title = "", xLabel = "", width = 560, height = 240, bars = false } = {}) {
  const pad = { l: 48, r: 12, t: 40, b: 34 };
  const all = series.flatMap((s) => s.points).filter(([, y]) => y !== null && Number.isFinite(y));
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart" });
  const label = svg("title");
  label.textContent = title;
  root.append(label);
  root.append(text(pad.l, 14, title, { "font-weight": 600, fill: "#0f172a" }));
  if (!all.length) {
    root.append(text(width / 2, height / 2, "no data yet", { "text-anchor": "middle" }));
    return root;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (bars) y0 = Math.min(0, y0);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 1; y1 += 1; }
  const sx = (x) => pad.l + ((x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const sy = (y) => height - pad.b - ((y - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  root.append(svg("line", { x1: pad.l, y1: height - pad.b, x2: width - pad.r, y2: height - pad.b, stroke: "#94a3b8" }));
  root.append(svg("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: height - pad.b, stroke: "#94a3b8" }));
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    root.append(svg("line", { x1: pad.l, y1: sy(y), x2: width - pad.r, y2: sy(y), stroke: "#e2e8f0" }));
    root.append(text(pad.l - 4, sy(y) + 4, fmt(y), { "text-anchor": "end" }));
  }
  root.append(text(pad.l, height - pad.b + 14, fmt(x0)));
  root.append(text(width - pad.r, height - pad.b + 14, fmt(x1), { "text-anchor": "end" }));
  root.append(text((width + pad.l) / 2, height - 4, xLabel, { "text-anchor": "middle" }));
  const barW = Math.max(2, (width - pad.l - pad.r) / Math.max(1, new Set(all.map((p) => p[0])).size) / (series.length + 1));
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = s.points.filter(([, y]) => y !== null && Number.isFinite(y));
    if (bars) {
      for (const [x, y] of pts) {
        root.append(svg("rect", { x: sx(x) - barW * (series.length / 2 - i), y: sy(Math.max(y, 0)), width: barW,
          height: Math.abs(sy(y) - sy(0)), fill: color, class: "bar" }));
      }
    } else if (pts.length) {
      const d = pts.map(([x, y], j) => `${j ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
      root.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": 2, class: "series", "data-name": s.name }));
      if (pts.length === 1) root.append(svg("circle", { cx: sx(pts[0][0]), cy: sy(pts[0][1]), r: 3, fill: color }));
    }
    const slot = (width - pad.l - pad.r) / series.length, chars = Math.max(6, Math.floor((slot - 20) / 6.5));
    const lx = pad.l + i * slot;
    root.append(svg("rect", { x: lx, y: 21, width: 10, height: 10, fill: color }));
    root.append(text(lx + 14, 30, s.name.length > chars ? `${s.name.slice(0, chars - 1)}…` : s.name));
  });
  return root;
}
