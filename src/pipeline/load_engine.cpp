// Model loading entry point. The Flux engine (text encoders, transformer, autoencoder)
// is built in its own issues; until it lands, asking for a model is a clear error, so
// that no server ever answers with an image that a model did not draw.
#include "core/error.h"
#include "pipeline/pipeline.h"

namespace fluxpipe {

std::unique_ptr<Engine> load_engine(const std::string& model_path) {
  throw UserError("[load_engine] cannot load '" + model_path +
                  "': this build of fluxpipe does not contain the FLUX.1 engine yet; "
                  "start `fluxpipe serve` without --model (generation then answers 503)");
}

}  // namespace fluxpipe
