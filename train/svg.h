// Small, dependency-free SVG charts for reports (`tally compare`): line charts of loss curves and bar charts of
// memory. Plain text out; the caller writes the file.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace tally::report {

enum class LineStyle { solid, dashed };

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y)
  LineStyle style = LineStyle::solid;
  int color = 0;  // index into a fixed palette; series of one optimizer share a colour
};

struct Bar {
  std::string name;
  double value = 0;
  std::string label;  // text printed above the bar (e.g. "16.8 MB")
  int color = 0;
};

std::string line_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                       const std::vector<Series>& series);
std::string bar_chart(const std::string& title, const std::string& y_label, const std::vector<Bar>& bars);

}  // namespace tally::report
