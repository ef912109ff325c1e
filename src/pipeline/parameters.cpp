#include <cstdio>

#include "pipeline/pipeline.h"

namespace fluxpipe {

std::string parameters_text(const GenerateJob& job, int64_t seed, const std::string& model_name) {
  std::string s = job.prompt + "\n";
  if (!job.negative_prompt.empty()) s += "Negative prompt: " + job.negative_prompt + "\n";
  s += "Steps: " + std::to_string(job.steps) + ", Sampler: Euler, Seed: " + std::to_string(seed) +
       ", Size: " + std::to_string(job.width) + "x" + std::to_string(job.height) + ", Model: " + model_name;
  if (!job.negative_prompt.empty()) {
    char cfg[32];
    std::snprintf(cfg, sizeof cfg, "%g", job.true_cfg_scale);
    s += std::string(", True CFG scale: ") + cfg;
  }
  return s;
}

}  // namespace fluxpipe
