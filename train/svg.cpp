// SVG line and bar charts (see svg.h). Axes get "nice" ticks; text is escaped.
#include "train/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace tally::report {

namespace {

constexpr int kWidth = 760, kHeight = 440, kLeft = 70, kRight = 170, kTop = 40, kBottom = 50;
const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"};

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

std::string fmt(const char* f, double a, double b) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, a, b);
  return buf;
}

// Tick step of 1, 2 or 5 times a power of ten giving about `n` ticks over [lo, hi].
double nice_step(double lo, double hi, int n) {
  double raw = (hi - lo) / n;
  if (!(raw > 0)) return 1;
  double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * p) return m * p;
  return 10 * p;
}

std::string header(const std::string& title) {
  std::string s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(kWidth) + "\" height=\"" +
                  std::to_string(kHeight) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s += "<text x=\"" + std::to_string(kWidth / 2) + "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" + esc(title) +
       "</text>\n";
  return s;
}

}  // namespace

std::string line_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                       const std::vector<Series>& series) {
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& s : series)
    for (auto [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  if (!(x1 >= x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  double ystep = nice_step(y0, y1, 6), xstep = nice_step(x0, x1, 8);
  y0 = std::floor(y0 / ystep) * ystep, y1 = std::ceil(y1 / ystep) * ystep;
  const double pw = kWidth - kLeft - kRight, ph = kHeight - kTop - kBottom;
  auto px = [&](double x) { return kLeft + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return kTop + (1 - (y - y0) / (y1 - y0)) * ph; };
  std::string s = header(title);
  for (double y = y0; y <= y1 + ystep * 1e-6; y += ystep) {
    s += "<line x1=\"" + num(kLeft) + "\" x2=\"" + num(kLeft + pw) + "\" y1=\"" + num(py(y)) + "\" y2=\"" + num(py(y)) +
         "\" stroke=\"#e5e5e5\"/>\n";
    s += "<text x=\"" + num(kLeft - 6) + "\" y=\"" + num(py(y) + 4) + "\" text-anchor=\"end\">" + num(y) + "</text>\n";
  }
  for (double x = std::ceil(x0 / xstep) * xstep; x <= x1 + xstep * 1e-6; x += xstep)
    s += "<text x=\"" + num(px(x)) + "\" y=\"" + num(kTop + ph + 18) + "\" text-anchor=\"middle\">" + num(x) + "</text>\n";
  s += "<rect x=\"" + num(kLeft) + "\" y=\"" + num(kTop) + "\" width=\"" + num(pw) + "\" height=\"" + num(ph) +
       "\" fill=\"none\" stroke=\"#333\"/>\n";
  s += "<text x=\"" + num(kLeft + pw / 2) + "\" y=\"" + num(kHeight - 10) + "\" text-anchor=\"middle\">" + esc(x_label) +
       "</text>\n";
  s += "<text transform=\"translate(16," + num(kTop + ph / 2) + ") rotate(-90)\" text-anchor=\"middle\">" + esc(y_label) +
       "</text>\n";
  int legend_y = kTop + 10;
  for (const auto& se : series) {
    const char* color = kPalette[size_t(se.color) % std::size(kPalette)];
    std::string dash = se.style == LineStyle::dashed ? " stroke-dasharray=\"6,4\"" : "";
    std::string pts;
    for (auto [x, y] : se.points)
      if (std::isfinite(x) && std::isfinite(y)) pts += fmt("%.1f,%.1f ", px(x), py(y));
    s += "<polyline fill=\"none\" stroke=\"" + std::string(color) + "\" stroke-width=\"1.8\"" + dash + " points=\"" + pts +
         "\"/>\n";
    s += "<line x1=\"" + num(kLeft + pw + 12) + "\" x2=\"" + num(kLeft + pw + 40) + "\" y1=\"" + num(legend_y) + "\" y2=\"" +
         num(legend_y) + "\" stroke=\"" + color + "\" stroke-width=\"2\"" + dash + "/>\n";
    s += "<text x=\"" + num(kLeft + pw + 46) + "\" y=\"" + num(legend_y + 4) + "\">" + esc(se.name) + "</text>\n";
    legend_y += 20;
  }
  return s + "</svg>\n";
}

std::string bar_chart(const std::string& title, const std::string& y_label, const std::vector<Bar>& bars) {
  double top = 0;
  for (const auto& b : bars) top = std::max(top, b.value);
  if (!(top > 0)) top = 1;
  double step = nice_step(0, top, 5);
  top = std::ceil(top / step) * step;
  const double pw = kWidth - kLeft - 40, ph = kHeight - kTop - kBottom;
  auto py = [&](double v) { return kTop + (1 - v / top) * ph; };
  std::string s = header(title);
  for (double y = 0; y <= top + step * 1e-6; y += step) {
    s += "<line x1=\"" + num(kLeft) + "\" x2=\"" + num(kLeft + pw) + "\" y1=\"" + num(py(y)) + "\" y2=\"" + num(py(y)) +
         "\" stroke=\"#e5e5e5\"/>\n";
    s += "<text x=\"" + num(kLeft - 6) + "\" y=\"" + num(py(y) + 4) + "\" text-anchor=\"end\">" + num(y) + "</text>\n";
  }
  s += "<text transform=\"translate(16," + num(kTop + ph / 2) + ") rotate(-90)\" text-anchor=\"middle\">" + esc(y_label) +
       "</text>\n";
  double slot = bars.empty() ? pw : pw / double(bars.size());
  for (size_t i = 0; i < bars.size(); ++i) {
    const auto& b = bars[i];
    double x = kLeft + slot * double(i) + slot * 0.2, w = slot * 0.6;
    const char* color = kPalette[size_t(b.color) % std::size(kPalette)];
    s += "<rect x=\"" + num(x) + "\" y=\"" + num(py(b.value)) + "\" width=\"" + num(w) + "\" height=\"" +
         num(py(0) - py(b.value)) + "\" fill=\"" + color + "\"/>\n";
    s += "<text x=\"" + num(x + w / 2) + "\" y=\"" + num(py(b.value) - 6) + "\" text-anchor=\"middle\">" + esc(b.label) +
         "</text>\n";
    s += "<text x=\"" + num(x + w / 2) + "\" y=\"" + num(kTop + ph + 18) + "\" text-anchor=\"middle\">" + esc(b.name) +
         "</text>\n";
  }
  s += "<line x1=\"" + num(kLeft) + "\" x2=\"" + num(kLeft + pw) + "\" y1=\"" + num(py(0)) + "\" y2=\"" + num(py(0)) +
       "\" stroke=\"#333\"/>\n";
  return s + "</svg>\n";
}

}  // namespace tally::report
