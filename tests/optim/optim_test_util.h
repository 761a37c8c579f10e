// Helpers for the optimizer tests: the golden file, the tally settings it records for each reference step,
// named parameters, and a combined absolute/relative tensor comparison that reports its worst element.
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/io/safetensors.h"
#include "core/random.h"
#include "core/tensor.h"
#include "optim/adafactor.h"
#include "optim/adamw.h"
#include "optim/came.h"
#include "optim/clip.h"
#include "optim/lamb.h"
#include "optim/schedule.h"
#include "optim/registry.h"
#include "optim/sgd.h"
#include "optim/sm3.h"
#include "tests/test_util.h"

namespace tally::test {

using namespace tally::optim;

inline const io::SafetensorsReader& optimizer_reference() {
  static const io::SafetensorsReader r(reference_dir() / "optimizer_reference.safetensors");
  return r;
}

// A named f32 parameter that requires grad, from values.
inline Tensor make_param(const std::string& name, const std::vector<float>& values, const Shape& shape,
                         Device device = Device::cpu()) {
  Tensor p = from_vector(values, shape, {.dtype = DType::f32, .device = device});
  p.set_requires_grad(true);
  p.set_name(name);
  return p;
}

inline Tensor make_grad(const std::vector<float>& values, const Shape& shape, Device device = Device::cpu()) {
  return from_vector(values, shape, {.dtype = DType::f32, .device = device});
}

// n normal values from tally's counter-based stream (same on every backend and run).
inline std::vector<float> normal_values(int64_t n, uint64_t seed, double std = 1.0) {
  Generator gen(seed);
  Tensor t = randn({n}, gen);
  std::vector<float> v = t.to_vector<float>();
  for (float& x : v) x = float(double(x) * std);
  return v;
}

// The worst element of a comparison under |a - b| <= atol + rtol * |b|.
struct Mismatch {
  double worst_ratio = 0;  // max over elements of |a - b| / (atol + rtol |b|); <= 1 passes
  double max_abs = 0, max_rel = 0;
  int64_t index = -1;
  double a = 0, b = 0;
  bool ok() const { return worst_ratio <= 1.0; }
};
inline Mismatch compare(const std::vector<float>& a, const std::vector<float>& b, double rtol, double atol) {
  Mismatch m;
  if (a.size() != b.size()) {
    m.worst_ratio = INFINITY;
    return m;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - double(b[i]));
    const double r = d == 0 ? 0.0 : d / (atol + rtol * std::fabs(double(b[i])));  // equal passes a zero tolerance
    m.max_abs = std::max(m.max_abs, d);
    if (b[i] != 0) m.max_rel = std::max(m.max_rel, d / std::fabs(double(b[i])));
    if (!(r <= m.worst_ratio)) {  // NaN counts as the worst
      m.worst_ratio = std::isnan(r) ? INFINITY : r;
      m.index = int64_t(i);
      m.a = a[i];
      m.b = b[i];
    }
  }
  return m;
}

// The tally settings a golden file records for a reference optimizer's step (tests/reference/tally_settings.py
// maps the reference's keyword arguments, and its defaults, to the registry's settings where the data is made).
inline optim::Settings settings_from_json(const nlohmann::json& j) {
  optim::Settings s;
  for (const auto& [name, value] : j.items()) {
    if (value.is_boolean()) s.set(name, value.get<bool>());
    else if (value.is_number()) s.set(name, value.get<double>());
    else if (value.is_string()) s.set(name, value.get<std::string>());
    else fail("golden file: tally setting '", name, "' is ", value.dump(), ", not a number, switch or word");
  }
  return s;
}

// The tests of what every optimizer must do (inspection changes nothing, restored state continues bit for bit,
// the thread count changes nothing, a fused gradient scale equals scaling first): each registered optimizer at its
// defaults with `common` over them, and then the variants that switch on what an optimizer's defaults leave off.
// A new optimizer is in these tests by its registration alone.
struct OptimizerCase {
  std::string name;  // the registry's
  optim::Settings settings;
  std::string label() const {
    std::string out = name;
    for (const auto& [k, v] : settings.values()) out += cat(" ", k, "=", v);
    return out;
  }
};
inline std::vector<OptimizerCase> every_optimizer(const optim::Settings& common = {{"lr", 1e-2}}) {
  const std::map<std::string, std::vector<optim::Settings>> variants = {
      {"sm3", {{{"momentum", 0.9}, {"beta", 0.5}}}},
      {"adafactor", {{{"no-adafactor-beta1", true}}}},
      {"came", {{{"came-bf16-m", true}}}},
      {"sgd", {{{"nesterov", true}}}},
  };
  std::vector<OptimizerCase> out;
  for (const optim::OptimizerEntry& e : optim::optimizers()) {
    out.push_back({e.name, common});
    if (auto v = variants.find(e.name); v != variants.end())
      for (const optim::Settings& extra : v->second) {
        OptimizerCase c{e.name, common};
        for (const auto& [k, value] : extra.values()) c.settings.set(k, value);
        out.push_back(c);
      }
  }
  return out;
}

}  // namespace tally::test
