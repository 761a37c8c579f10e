// The optimizer registry: every entry builds its optimizer from settings (defaults, given values, wrong ones refused
// by name), predicts exactly the state it allocates, and the union of settings (the command line's flags) names
// each setting once with its per-optimizer defaults.
#include <doctest/doctest.h>

#include <set>

#include "core/tensor.h"
#include "optim/came.h"
#include "optim/registry.h"
#include "tests/optim/optim_test_util.h"

using namespace tally;
using namespace tally::optim;

TEST_SUITE("optim") {

TEST_CASE("registry: every optimizer is built from settings and predicts exactly what it allocates") {
  const Shape shapes[] = {{300, 200}, {200}, {7, 5, 3}};
  for (const OptimizerEntry& e : optimizers()) {
    INFO(e.name);
    CHECK(e.default_lr > 0);
    CHECK(e.settings.size() >= 3);
    std::vector<Tensor> params;
    std::vector<NamedShape> named;
    for (size_t i = 0; i < 3; ++i) {
      params.push_back(test::make_param(cat(e.name, ".p", i), test::normal_values(numel(shapes[i]), i + 1), shapes[i]));
      named.push_back(named_shape(params.back()));
    }
    auto opt = make_optimizer(e.name, params);
    CHECK(opt->kind() == e.name);
    CHECK(opt->lr() == doctest::Approx(e.default_lr).scale(0));  // the default, as no lr was given
    opt->init_state();
    CHECK(opt->total_state_bytes() == total_bytes(predict_optimizer_state(e.name, named)));
    CHECK(opt->total_state_bytes() == total_bytes(opt->predict_state_bytes()));
    // Weight decay on matrices only by default: two groups, the 1-D parameter alone in the second.
    CHECK(opt->num_groups() == 2);
    CHECK(opt->group_params(1).size() == 1);
    auto all = make_optimizer(e.name, params, {{"decay", "all"}, {"lr", 0.25}});
    CHECK(all->num_groups() == 1);
    CHECK(all->lr() == 0.25);
  }
}

TEST_CASE("registry: settings reach the configuration; unknown names and malformed values are refused by name") {
  Tensor p = test::make_param("w", test::normal_values(64 * 48, 3), {64, 48});
  auto came = make_optimizer("came", {p}, {{"beta3", 0.5}, {"came-bf16-m", true}, {"weight-decay", 0.1}});
  const CameConfig& c = dynamic_cast<Came&>(*came).config(0);
  CHECK(c.betas[2] == 0.5);
  CHECK(c.exp_avg_dtype == DType::bf16);
  CHECK(c.weight_decay == 0.1);
  CHECK(c.betas[0] == 0.9);  // not given: the default
  CHECK_THROWS_WITH_AS(make_optimizer("came", {p}, {{"momentum", 0.9}}),
                       doctest::Contains("[came] has no setting 'momentum' (it reads lr, weight-decay, decay, beta1"),
                       Error);
  CHECK_THROWS_WITH_AS(make_optimizer("adamw", {p}, {{"beta1", "high"}}),
                       doctest::Contains("[adamw] setting 'beta1' expects a finite number within double's range, got 'high'"),
                       Error);
  CHECK_THROWS_WITH_AS(make_optimizer("came", {p}, {{"beta3", "1e-400"}}),
                       doctest::Contains("[came] setting 'beta3' expects a finite number within double's range"), Error);
  CHECK_THROWS_WITH_AS(make_optimizer("sgd", {p}, {{"nesterov", "maybe"}}),
                       doctest::Contains("[sgd] switch 'nesterov' expects true or false, got 'maybe'"), Error);
  CHECK_THROWS_WITH_AS(make_optimizer("came", {p}, {{"decay", "some"}}),
                       doctest::Contains("'decay' must be matrices, all or none, got 'some'"), Error);
  CHECK_THROWS_WITH_AS(make_optimizer("no-such-optimizer", {p}),
                       doctest::Contains("unknown optimizer 'no-such-optimizer' (expected one of came"), Error);
  // The entry's own checks run before anything is built: check() throws what make() would.
  CHECK_THROWS_WITH_AS(find_optimizer("came").check({{"beta1", 2.0}}),
                       doctest::Contains("betas must be in [0, 1], [0, 1) and [0, 1)"), Error);
  // beta2 or beta3 of 1: a moving average that stays 0 under the update's division (NaN from the first step).
  for (const char* b : {"beta2", "beta3"})
    CHECK_THROWS_WITH_AS(find_optimizer("came").check({{b, 1.0}}), doctest::Contains("stay 0 and the update divides"),
                         Error);
  CHECK_NOTHROW(find_optimizer("came").check({{"beta1", 1.0}}));  // m stays 0: no update, nothing undefined
  CHECK_NOTHROW(find_optimizer("came").check({}));
}

TEST_CASE("registry: the union of settings names each once; differing defaults are listed, not guessed") {
  const std::vector<Setting> all = all_settings();
  std::set<std::string> names;
  for (const Setting& s : all) CHECK(names.insert(s.name).second);
  for (const OptimizerEntry& e : optimizers())
    for (const Setting& s : e.settings) CHECK(names.count(s.name) == 1);
  auto find = [&](const std::string& name) {
    for (const Setting& s : all)
      if (s.name == name) return s;
    FAIL("no setting ", name);
    return Setting{};
  };
  const Setting lr = find("lr");
  CHECK(lr.default_value.empty());  // every optimizer has its own
  CHECK(lr.help.find("came 0.001") != std::string::npos);
  CHECK(lr.help.find("sgd 0.1") != std::string::npos);
  const Setting beta1 = find("beta1");
  CHECK(beta1.default_value == "0.9");  // shared, same default
  CHECK(beta1.help.find("(came, adamw, adafactor") != std::string::npos);
  CHECK(find("came-bf16-m").kind == SettingKind::switch_);
  CHECK(SettingValue(1e-30).text == "1e-30");
  CHECK(SettingValue(0.001).text == "0.001");
  CHECK(SettingValue(true).text == "true");
}

}  // TEST_SUITE
