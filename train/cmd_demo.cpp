// `tally demo`: a short, self-contained autograd demo on the CPU (fits y = sin-like targets with a small MLP)
// that prints the loss falling and the memory ledger's table. A first look at the engine, not the main job.
#include <cmath>
#include <cstdio>

#include "core/autograd/node.h"
#include "core/ledger.h"
#include "core/ops.h"
#include "train/commands.h"
#include "train/flags.h"

namespace tally::train {

int cmd_demo(const Args& args) {
  Flags flags("demo", "fit a two-layer MLP to a smooth target with plain SGD and show the memory ledger",
              {{"steps", "training steps", "200"}, {"hidden", "hidden width", "64"}, {"lr", "learning rate", "0.1"},
               {"seed", "random seed", "1"}});
  flags.parse(args);
  const int64_t steps = flags.integer("steps"), hidden = flags.integer("hidden"), n = 256;
  const double lr = flags.number("lr");
  if (steps < 1 || hidden < 1) throw FlagError("--steps and --hidden must be positive");
  if (!std::isfinite(lr) || lr <= 0) throw FlagError(cat("--lr must be a finite number > 0, got ", flags.str("lr")));
  Generator gen(uint64_t(flags.integer("seed")));

  Tensor x, y, w1, b1, w2, b2;
  {
    MemoryScope data(Category::other, "demo.data");
    x = rand({n, 1}, gen) * 6.0 - 3.0;  // inputs in [-3, 3)
    y = tanh(x * 1.5) * 0.8;            // a smooth target
  }
  {
    MemoryScope params(Category::parameter, "demo.mlp");
    w1 = (randn({hidden, 1}, gen) * 0.5).set_name("w1");
    b1 = zeros({hidden}).set_name("b1");
    w2 = (randn({1, hidden}, gen) * (1.0 / std::sqrt(double(hidden)))).set_name("w2");
    b2 = zeros({1}).set_name("b2");
  }
  std::vector<Tensor*> params = {&w1, &b1, &w2, &b2};
  for (Tensor* p : params) p->set_requires_grad(true);

  std::printf(
      "tally demo: a %lld-unit MLP fitting tanh(1.5x)*0.8 on %lld points (a demo of the autograd engine;\n"
      "GPT-2 trains with `tally train`)\n",
      (long long)hidden, (long long)n);
  double first = 0, last = 0;
  for (int64_t step = 1; step <= steps; ++step) {
    Tensor loss;
    {
      MemoryScope act(Category::activation, "demo.forward");
      Tensor h = gelu(linear(x, w1, b1));
      Tensor pred = linear(h, w2, b2);
      Tensor diff = pred - y;
      loss = mean(diff * diff);
    }
    loss.backward();
    {
      NoGradGuard no_grad;
      for (Tensor* p : params) {
        add_(*p, p->grad(), -lr);
        p->grad().zero_();
      }
    }
    last = loss.item();
    if (step == 1) first = last;
    if (step == 1 || step % (steps / 5 > 0 ? steps / 5 : 1) == 0)
      std::printf("step %5lld  loss %.6f\n", (long long)step, last);
  }
  std::printf("\nloss %.6f -> %.6f\n\nmemory ledger (CPU):\n%s", first, last, ledger().table().c_str());
  // A demo whose loss did not fall (a rate too high, say) says so: the exit status alone would leave it unexplained.
  if (steps > 1 && !(last < first)) {
    std::fprintf(stderr, "tally demo: the loss did not fall (%g -> %g) in %lld steps: try a smaller --lr\n", first,
                 last, (long long)steps);
    return 1;
  }
  return 0;
}

}  // namespace tally::train
