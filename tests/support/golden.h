// Comparing tensors with the golden reference data in ../shared/testdata: the tolerance
// the data's README recommends, |a - b| <= atol + rtol * |b| element-wise, and on failure
// the first values side by side and the worst element.
#pragma once

#include <cmath>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "io/weights.h"

namespace fluxpipe::testing {

inline std::string testdata(const std::string& rel) { return std::string(FLUXPIPE_SHARED_DIR) + "/testdata/" + rel; }

inline void expect_matches(const Tensor& got, const Tensor& want, double atol, double rtol, const std::string& what) {
  ASSERT_EQ(got.numel(), want.numel()) << what << ": got " << got.describe() << ", want " << want.describe();
  std::vector<float> a = got.to_floats(), b = want.to_floats();
  double worst_excess = -1, worst_diff = 0;
  size_t worst = 0, bad = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    double allowed = atol + rtol * std::fabs(static_cast<double>(b[i]));
    if (!(d <= allowed)) ++bad;
    if (!(d - allowed <= worst_excess)) {
      worst_excess = d - allowed;
      worst_diff = d;
      worst = i;
    }
  }
  if (bad) {
    std::string first;
    for (size_t i = 0; i < std::min<size_t>(5, a.size()); ++i) first += " " + std::to_string(a[i]) + "/" + std::to_string(b[i]);
    ADD_FAILURE() << what << ": " << bad << " of " << a.size() << " values outside " << atol << " + " << rtol
                  << "*|ref|; worst at " << worst << ": " << a[worst] << " vs " << b[worst] << " (diff " << worst_diff
                  << "); first got/want:" << first;
  }
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

}  // namespace fluxpipe::testing
