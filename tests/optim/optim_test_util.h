// Helpers for the optimizer tests: the golden file, building optimizers from its recorded hyperparameters,
// named parameters, and a combined absolute/relative tensor comparison that reports its worst element.
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
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
#include "optim/schedule.h"
#include "optim/sgd.h"
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

// Optimizer configs from the generator's JSON hyperparameters (metadata "cases").
inline CameConfig came_config(const nlohmann::json& h, const nlohmann::json& extra) {
  CameConfig c{.lr = h.at("lr").get<double>()};
  if (h.contains("betas")) c.betas = {h["betas"][0].get<double>(), h["betas"][1].get<double>(), h["betas"][2].get<double>()};
  if (h.contains("eps")) c.eps = {h["eps"][0].get<double>(), h["eps"][1].get<double>()};
  if (h.contains("clip_threshold")) c.clip_threshold = h["clip_threshold"].get<double>();
  if (h.contains("weight_decay")) c.weight_decay = h["weight_decay"].get<double>();
  if (extra.contains("confidence_init") && extra["confidence_init"] == "ones") c.confidence_init = ConfidenceInit::ones;
  return c;
}
inline AdamWConfig adamw_config(const nlohmann::json& h) {
  AdamWConfig c{.lr = h.at("lr").get<double>()};
  if (h.contains("betas")) c.betas = {h["betas"][0].get<double>(), h["betas"][1].get<double>()};
  if (h.contains("eps")) c.eps = h["eps"].get<double>();
  if (h.contains("weight_decay")) c.weight_decay = h["weight_decay"].get<double>();
  return c;
}
inline AdafactorConfig adafactor_config(const nlohmann::json& h) {
  AdafactorConfig c{.lr = h.at("lr").get<double>()};
  if (h.contains("eps")) c.eps = {h["eps"][0].get<double>(), h["eps"][1].get<double>()};
  if (h.contains("clip_threshold")) c.clip_threshold = h["clip_threshold"].get<double>();
  if (h.contains("decay_rate")) c.decay_rate = h["decay_rate"].get<double>();
  if (h.contains("beta1")) c.beta1 = h["beta1"].get<double>();
  if (h.contains("weight_decay")) c.weight_decay = h["weight_decay"].get<double>();
  return c;
}
inline SgdConfig sgd_config(const nlohmann::json& h) {
  SgdConfig c{.lr = h.at("lr").get<double>()};
  if (h.contains("momentum")) c.momentum = h["momentum"].get<double>();
  if (h.contains("dampening")) c.dampening = h["dampening"].get<double>();
  if (h.contains("weight_decay")) c.weight_decay = h["weight_decay"].get<double>();
  if (h.contains("nesterov") && h["nesterov"].get<bool>()) c.nesterov = Nesterov::yes;
  return c;
}

inline std::unique_ptr<optim::Optimizer> make_optimizer(const std::string& kind, const nlohmann::json& hyper,
                                                        const nlohmann::json& extra, const std::vector<Tensor>& params) {
  if (kind == "came") return std::make_unique<optim::Came>(params, came_config(hyper, extra));
  if (kind == "adamw") return std::make_unique<optim::AdamW>(params, adamw_config(hyper));
  if (kind == "adafactor") return std::make_unique<optim::Adafactor>(params, adafactor_config(hyper));
  if (kind == "sgd") return std::make_unique<optim::Sgd>(params, sgd_config(hyper));
  fail("unknown optimizer kind in the golden file: ", kind);
}

}  // namespace tally::test
