// fluxpipe CLI: `pull`, `models`, and model names in --model (hub/pull.h does the work).
#pragma once

#include <string>
#include <vector>

namespace fluxpipe::cli {

// fluxpipe pull NAME [--models DIR] [--jobs N] [--retries N] [--verify] | pull --list
int cmd_pull(const std::vector<std::string>& args);
// fluxpipe models [--models DIR] | models rm NAME [--models DIR]
int cmd_models(const std::vector<std::string>& args);

// --model for generate and serve: a path is itself; a pulled model name its folder; a name not
// pulled is an error that prints the pull command, unless `pull_if_missing` (serve --pull), when
// it is pulled now with a progress display.
std::string resolve_model_arg(const std::string& model, const std::string& models_flag, bool pull_if_missing);

}  // namespace fluxpipe::cli
