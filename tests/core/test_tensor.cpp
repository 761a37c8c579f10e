// Tensor basics: creation, views (shapes, strides, sharing), contiguous copies, dtype conversion, the RNG stream.
#include <doctest/doctest.h>

#include <cmath>

#include "core/ops.h"
#include "core/parse.h"
#include "core/random.h"
#include "tests/gradcheck.h"

using namespace tally;

TEST_SUITE("core") {

TEST_CASE("creation: zeros, ones, full, arange, from_vector") {
  Tensor z = zeros({2, 3});
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.strides() == Strides{3, 1});
  CHECK(z.dtype() == DType::f32);
  CHECK(z.to_vector<float>() == std::vector<float>(6, 0.0f));
  CHECK(ones({4}).to_vector<double>() == std::vector<double>(4, 1.0));
  CHECK(full({2}, 2.5, {.dtype = DType::f64}).to_vector<double>() == std::vector<double>{2.5, 2.5});
  CHECK(arange(3, 7, {.dtype = DType::i32}).to_vector<int32_t>() == std::vector<int32_t>{3, 4, 5, 6});
  Tensor v = from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(v.numel() == 6);
  CHECK(v.to_vector<float>() == std::vector<float>{1, 2, 3, 4, 5, 6});
}

TEST_CASE("checked_numel: negative dimensions and overflow give nothing; a zero dimension gives 0 first") {
  const int64_t big = int64_t(1) << 40;
  CHECK(checked_numel(Shape{}) == 1);
  CHECK(checked_numel(Shape{2, 3, 4}) == 24);
  CHECK(checked_numel(Shape{big, big, 0}) == 0);  // empty, though the product in order overflows
  CHECK(!checked_numel(Shape{big, big}));
  CHECK(!checked_numel(Shape{-5, 0}));  // negative before zero
  CHECK(checked_numel(Shape{int64_t(1) << 62, 2}) == std::nullopt);
  CHECK(checked_numel(Shape{int64_t(1) << 61, 2}) == int64_t(1) << 62);
  CHECK_THROWS_WITH_AS(empty({big, big}), doctest::Contains("[empty] shape (1099511627776, 1099511627776) of f32"),
                       Error);
  CHECK_THROWS_WITH_AS(empty({int64_t(1) << 62}), doctest::Contains("more bytes than fit in 64 bits"), Error);
  CHECK(empty({big, big, 0}, {DType::f32, Device::meta()}).numel() == 0);
}

TEST_CASE("parse_finite_double: the whole text, decimal, within double's range, finite") {
  CHECK(parse_finite_double("3e-4") == 3e-4);
  CHECK(parse_finite_double("-0.5") == -0.5);
  CHECK(parse_finite_double("+2.5E3") == 2500.0);
  CHECK(parse_finite_double(".5") == 0.5);
  CHECK(parse_finite_double("1.") == 1.0);
  CHECK(parse_finite_double("0") == 0.0);
  CHECK(parse_finite_double("0e-500") == 0.0);  // zero, not an underflow
  CHECK(parse_finite_double("2.2250738585072014e-308") == 2.2250738585072014e-308);
  for (const char* bad :
       {"",   "1e-332", "1e-400", "0.0000001e-320", "1e400", "-1e400", "inf", "nan", "-inf", "0.1x", "x",  "1 ",
        " 1", "\t1",    "0x10",   "-0x1p3",         "++1",   "+-1",    "+",   "-",   "1e",   "e5",   "1,5"})
    CHECK_MESSAGE(!parse_finite_double(bad), std::string(bad));
}

TEST_CASE("parse_int64: the whole text, decimal, within int64's range") {
  CHECK(parse_int64("42") == 42);
  CHECK(parse_int64("-7") == -7);
  CHECK(parse_int64("+8") == 8);
  CHECK(parse_int64("007") == 7);
  CHECK(parse_int64("9223372036854775807") == INT64_MAX);
  CHECK(parse_int64("-9223372036854775808") == INT64_MIN);
  for (const char* bad : {"", "9223372036854775808", "99999999999999999999", "1.5", "1e3", " 1", "1 ", "0x10", "0X1F",
                          "++1", "+-1", "+", "-", "x", "2x"})
    CHECK_MESSAGE(!parse_int64(bad), std::string(bad));
}

TEST_CASE("item requires exactly one element") {
  CHECK_THROWS_WITH_AS(from_vector<float>({1, 2}, {2}).item(), doctest::Contains("[item] needs a one-element tensor"),
                       Error);
  CHECK(from_vector<float>({7}, {1}).item() == 7.0);
}

TEST_CASE("views share storage and compute strides") {
  Tensor a = from_vector<float>({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor t = a.transpose(0, 1);
  CHECK(t.shape() == Shape{3, 2});
  CHECK(t.strides() == Strides{1, 3});
  CHECK_FALSE(t.is_contiguous());
  CHECK(t.contiguous().to_vector<float>() == std::vector<float>{0, 3, 1, 4, 2, 5});
  // A tensor of no element is contiguous, whatever its strides (a (5, 0) matrix, a slice of no row, transposed).
  for (const Shape& none : {Shape{5, 0}, Shape{2, 0, 3}, Shape{0, 0}}) CHECK(zeros(none).is_contiguous());
  CHECK(a.slice(0, 1, 1).transpose(0, 1).is_contiguous());
  Tensor s = a.slice(1, 1, 3);
  CHECK(s.shape() == Shape{2, 2});
  CHECK(s.offset() == 1);
  CHECK(s.to_vector<float>() == std::vector<float>{1, 2, 4, 5});
  Tensor p = from_vector<float>({0, 1, 2, 3, 4, 5, 6, 7}, {2, 2, 2}).permute({2, 0, 1});
  CHECK(p.to_vector<float>() == std::vector<float>{0, 2, 4, 6, 1, 3, 5, 7});
  Tensor e = from_vector<float>({1, 2}, {2, 1}).expand({2, 3});
  CHECK(e.strides() == Strides{1, 0});
  CHECK(e.to_vector<float>() == std::vector<float>{1, 1, 1, 2, 2, 2});
  CHECK(a.view({3, 2}).shape() == Shape{3, 2});
  CHECK(a.view({-1}).shape() == Shape{6});
  CHECK(a.select(0, 1).to_vector<float>() == std::vector<float>{3, 4, 5});
  CHECK(a.unsqueeze(0).shape() == Shape{1, 2, 3});
  CHECK(a.unsqueeze(-1).shape() == Shape{2, 3, 1});
  CHECK(a.unsqueeze(0).squeeze(0).shape() == Shape{2, 3});
  // Writing through a view changes the base.
  a.slice(0, 1, 2).fill_(9.0);
  CHECK(a.to_vector<float>() == std::vector<float>{0, 1, 2, 9, 9, 9});
}

TEST_CASE("bytes_as reads a contiguous tensor's bytes as another dtype, in place") {
  Tensor a = from_vector<float>({1.0f, -2.0f, 0.5f, 3.0f}, {2, 2});
  Tensor h = bytes_as(a, DType::bf16);  // a float's high half is its bf16 (exact for these values)
  CHECK(h.shape() == Shape{8});
  CHECK(h.to_vector<float>() == std::vector<float>{0.0f, 1.0f, 0.0f, -2.0f, 0.0f, 0.5f, 0.0f, 3.0f});
  h.slice(0, 6, 8).copy_(from_vector<float>({0.0f, 7.0f}, {2}));  // writes land in the base's bytes
  CHECK(a.to_vector<float>()[3] == 7.0f);
  Tensor tail = bytes_as(a.view({4}).slice(0, 2, 4), DType::bf16);  // a view's start, in the new dtype's elements
  CHECK(tail.offset() == 4);
  CHECK(tail.to_vector<float>() == std::vector<float>{0.0f, 0.5f, 0.0f, 7.0f});
  CHECK(bytes_as(h.slice(0, 2, 6), DType::f32).to_vector<float>() == std::vector<float>{-2.0f, 0.5f});
  CHECK_THROWS_WITH_AS(bytes_as(h.slice(0, 1, 3), DType::f32), doctest::Contains("[bytes_as] "), Error);
  CHECK_THROWS_WITH_AS(bytes_as(h.slice(0, 0, 3), DType::f32),
                       doctest::Contains("is not a whole number of f32 elements"), Error);
  CHECK_THROWS_WITH_AS(bytes_as(a.transpose(0, 1), DType::bf16), doctest::Contains("is not contiguous"), Error);
}

TEST_CASE("view errors name the op and the shapes") {
  Tensor a = zeros({2, 3});
  CHECK_THROWS_WITH_AS(a.view({4, 2}), doctest::Contains("[view] cannot view (2, 3) (6 elements) as (4, 2)"), Error);
  CHECK_THROWS_WITH_AS(a.transpose(0, 1).view({6}), doctest::Contains("is not contiguous; use reshape"), Error);
  CHECK(a.transpose(0, 1).reshape({6}).shape() == Shape{6});
  CHECK_THROWS_WITH_AS(a.slice(1, 2, 5), doctest::Contains("[slice] range [2, 5) out of bounds for dim 1 of shape (2, 3)"),
                       Error);
  CHECK_THROWS_WITH_AS(a.expand({4, 3}), doctest::Contains("[expand] cannot expand (2, 3) to (4, 3)"), Error);
  CHECK_THROWS_WITH_AS(a.permute({0, 0}), doctest::Contains("[permute] dim 0 repeated"), Error);
  CHECK_THROWS_WITH_AS(a.transpose(0, 2), doctest::Contains("[transpose] dim 2 out of range"), Error);
}

TEST_CASE("dtype conversion, bf16 rounding") {
  Tensor a = from_vector<float>({1.0f, -2.5f, 3.14159265f, 65504.0f}, {4});
  CHECK(a.to(DType::f64).to_vector<double>()[1] == -2.5);
  CHECK(a.to(DType::i32).to_vector<int32_t>() == std::vector<int32_t>{1, -2, 3, 65504});
  std::vector<float> back = a.to(DType::bf16).to(DType::f32).to_vector<float>();
  CHECK(back[0] == 1.0f);
  CHECK(back[1] == -2.5f);
  CHECK(back[2] == 3.140625f);  // nearest bf16 to pi
  // Round-to-nearest-even on a tie: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7.
  CHECK(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)) == 1.0f);
  CHECK(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)) == 1.0f + 4.0f / 256);
  CHECK(std::isnan(bf16_to_float(float_to_bf16(NAN))));
}

TEST_CASE("stochastic rounding to bf16 is unbiased on average") {
  float x = 1.0f + 1.0f / 512;  // a quarter of the way from 1 to the next bf16 (1 + 2^-7)
  double mean = 0;
  for (uint32_t i = 0; i < 65536; ++i) mean += bf16_to_float(float_to_bf16_stochastic(x, i));
  mean /= 65536;
  CHECK(mean == doctest::Approx(x).epsilon(1e-6));
}

TEST_CASE("the random stream depends only on seed and position") {
  Generator g1(42), g2(42), g3(43);
  std::vector<float> a = randn({1000}, g1).to_vector<float>();
  std::vector<float> b = randn({1000}, g2).to_vector<float>();
  CHECK(a == b);
  CHECK(randn({1000}, g3).to_vector<float>() != a);
  // Drawing 1000 at once equals drawing 400 then 600.
  Generator g4(42);
  std::vector<float> c = randn({400}, g4).to_vector<float>();
  std::vector<float> d = randn({600}, g4).to_vector<float>();
  c.insert(c.end(), d.begin(), d.end());
  CHECK(c == a);
  // Moments of the normal stream.
  Generator g5(7);
  std::vector<double> n = randn({200000}, g5, {.dtype = DType::f64}).to_vector<double>();
  double m = 0, v = 0;
  for (double x : n) m += x;
  m /= double(n.size());
  for (double x : n) v += (x - m) * (x - m);
  v /= double(n.size());
  CHECK(std::abs(m) < 0.01);
  CHECK(std::abs(v - 1.0) < 0.01);
  // Uniform in [0, 1).
  Generator g6(9);
  for (float u : rand({10000}, g6).to_vector<float>()) {
    CHECK(u >= 0.0f);
    CHECK(u < 1.0f);
  }
}

TEST_CASE("philox matches the published Random123 known-answer vector") {
  // Philox4x32-10, counter {0,0,0,0}, key {0,0}: 6627e8d5 e169c58d bc57ac4c 9b00dbd8 (Random123 kat_vectors).
  auto r = philox(0, 0);
  CHECK(r[0] == 0x6627e8d5u);
  CHECK(r[1] == 0xe169c58du);
  CHECK(r[2] == 0xbc57ac4cu);
  CHECK(r[3] == 0x9b00dbd8u);
}

TEST_CASE("cat and split") {
  Tensor a = from_vector<float>({1, 2, 3, 4}, {2, 2}), b = from_vector<float>({5, 6}, {1, 2});
  Tensor c = cat({a, b}, 0);
  CHECK(c.shape() == Shape{3, 2});
  CHECK(c.to_vector<float>() == std::vector<float>{1, 2, 3, 4, 5, 6});
  Tensor d = cat({a, a}, 1);
  CHECK(d.to_vector<float>() == std::vector<float>{1, 2, 1, 2, 3, 4, 3, 4});
  auto parts = split(c, 2, 0);
  REQUIRE(parts.size() == 2);
  CHECK(parts[1].to_vector<float>() == std::vector<float>{5, 6});
  CHECK_THROWS_WITH_AS(cat({a, zeros({2, 3})}, 0), doctest::Contains("[cat] shapes (2, 2) and (2, 3) differ outside dim 0"),
                       Error);
}

TEST_CASE("device parsing") {
  CHECK(Device::parse("cpu") == Device::cpu());
  CHECK(Device::parse("cuda:1") == Device::cuda(1));
  CHECK(Device::parse("cuda").str() == "cuda:0");
  CHECK_THROWS_WITH_AS(Device::parse("tpu"), doctest::Contains("unknown device 'tpu'"), Error);
  CHECK(Device::parse("cuda:12") == Device::cuda(12));
  // Decimal digits only, within an int: not wrapped (2^32 is not cuda:0), no sign, no space, no suffix.
  for (const char* bad : {"cuda:4294967296", "cuda:", "cuda: 1", "cuda:+1", "cuda:-1", "cuda:1x", "cuda:1.0"})
    CHECK_THROWS_WITH_AS(Device::parse(bad), doctest::Contains(cat("unknown device '", bad, "'").c_str()), Error);
}

}  // TEST_SUITE
