// Autograd engine: accumulation, shared subgraphs, deep graphs without recursion, no-grad, detach, freed
// graphs, and error paths.
#include <doctest/doctest.h>

#include "core/autograd/node.h"
#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace tally;
using tally::test::check_close;

TEST_SUITE("core") {

TEST_CASE("gradients accumulate across backward calls until cleared") {
  Tensor w = from_vector<double>({1, 2, 3}, {3}).set_requires_grad(true);
  sum(w * w).backward();
  check_close(w.grad(), {2, 4, 6});
  sum(w * 3.0).backward();
  check_close(w.grad(), {5, 7, 9});
  w.grad().zero_();
  sum(w).backward();
  check_close(w.grad(), {1, 1, 1});
  w.clear_grad();
  CHECK_FALSE(w.grad().defined());
}

TEST_CASE("a shared subexpression gets the sum of its uses (diamond graph)") {
  Tensor x = from_vector<double>({2}, {1}).set_requires_grad(true);
  Tensor h = x * x;               // 4
  Tensor y = h * 3.0 + exp(h);    // d/dx = (3 + e^h) * 2x
  y.backward();
  check_close(x.grad(), {(3 + std::exp(4.0)) * 4}, 1e-9, 1e-12);
}

TEST_CASE("deep graphs backpropagate without recursion") {
  Tensor x = from_vector<double>({1.0}, {1}).set_requires_grad(true);
  Tensor y = x;
  for (int i = 0; i < 100000; ++i) y = y * 1.0 + 0.0;
  y.backward();
  check_close(x.grad(), {1.0});
}

TEST_CASE("no-grad guard and detach stop recording") {
  Tensor x = ones({2}).set_requires_grad(true);
  {
    NoGradGuard g;
    Tensor y = x * 2.0;
    CHECK_FALSE(y.requires_grad());
  }
  CHECK((x * 2.0).requires_grad());
  Tensor d = (x * 2.0).detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(d.is_leaf());
  // detach shares storage.
  Tensor e = x.detach();
  e.fill_(5.0);
  CHECK(x.to_vector<float>() == std::vector<float>{5, 5});
}

TEST_CASE("gradients flow only to inputs that require them") {
  Tensor a = ones({2}).set_requires_grad(true), b = ones({2});
  sum(a * b).backward();
  CHECK(a.grad().defined());
  CHECK_FALSE(b.grad().defined());
}

TEST_CASE("backward error paths") {
  Tensor a = ones({2});
  CHECK_THROWS_WITH_AS(a.backward(), doctest::Contains("[backward] the tensor does not require grad"), Error);
  Tensor w = ones({2}).set_requires_grad(true);
  CHECK_THROWS_WITH_AS((w * 2.0).backward(), doctest::Contains("a gradient must be given for a non-scalar tensor of shape (2,)"),
                       Error);
  Tensor y = sum(w * w);
  y.backward();
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("was already freed by an earlier backward"), Error);
  Tensor z = w * 2.0;
  CHECK_THROWS_WITH_AS(z.backward(ones({3})), doctest::Contains("[backward] gradient (3,) does not match tensor (2,)"), Error);
  CHECK_THROWS_WITH_AS(z.set_requires_grad(false), doctest::Contains("only leaf tensors"), Error);
  CHECK_THROWS_WITH_AS(zeros({2}, {.dtype = DType::i32}).set_requires_grad(true),
                       doctest::Contains("only floating tensors can require grad"), Error);
}

TEST_CASE("retain_graph allows a second backward") {
  Tensor w = from_vector<double>({3}, {1}).set_requires_grad(true);
  Tensor y = w * w;
  run_backward(y, Tensor(), {.retain_graph = true});
  run_backward(y, Tensor(), {});
  check_close(w.grad(), {12});
}

TEST_CASE("sum_to reverses broadcasting") {
  Tensor g = ones({2, 3, 4}, {.dtype = DType::f64});
  check_close(sum_to(g, {3, 1}), {8, 8, 8});
  CHECK(sum_to(g, {1, 4}).shape() == Shape{1, 4});
  CHECK(sum_to(g, {2, 3, 4}).shape() == Shape{2, 3, 4});
  CHECK_THROWS_WITH_AS(sum_to(g, {5}), doctest::Contains("[sum_to] cannot reduce (2, 3, 4) to (5,)"), Error);
}

}  // TEST_SUITE
