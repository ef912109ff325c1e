// fluxpipe: the command line. Subcommands: serve, keys, webhook-secret.
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <random>
#include <unistd.h>
#include <ctime>
#include <iostream>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/error.h"
#include "core/parse.h"
#include "pipeline/pipeline.h"
#include "server/api_server.h"
#include "server/keys.h"
#include "server/options.h"
#include "server/request.h"
#include "server/store.h"
#include "cli/option_table.h"
#include "cli/pull_command.h"

namespace {

using namespace fluxpipe;

const char* kUsage =
    "usage: fluxpipe <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve --data DIR [--listen HOST:PORT] [--model PATH|NAME [--pull]] [--store URL --role all|api|worker]\n"
    "                                       serve the generate v3 API (one node, or one of several)\n"
    "  pull NAME [--models DIR] [--jobs N]  download a model: a preset (schnell, schnell-fp8, schnell-q8,\n"
    "                                       schnell-q4) or hf:OWNER/REPO[@REV][:PATTERN,...]; `pull --list`\n"
    "  models [rm NAME] [--models DIR]      the pulled models and their sizes; delete one\n"
    "  keys add --data DIR [--name NAME]    create an API key (printed alone on the last line)\n"
    "  keys list --data DIR                 list keys (id, name, created, state)\n"
    "  keys revoke --data DIR ID|NAME       revoke a key\n"
    "  webhook-secret --data DIR            print the secret that signs webhooks\n"
    "  migrate --store URL                  apply the store's schema (serve does it too)\n"
    "  run COMPONENT --weights W --inputs IN --output OUT [--config P.json] [--compute f32|bf16] [--device D]\n"
    "                                       run transformer | vae-decode | vae-encode | sample | randn\n"
    "                                       on named tensors (see `fluxpipe help run`)\n"
    "  tokenize clip|t5 [--tokenizer PATH] [--length N] \"text\"   the ids as a JSON array\n"
    "  generate \"prompt\" -o out.png --model PATH|NAME [--width W --height H --steps N --seed S\n"
    "           --samples N --negative-prompt TEXT --true-cfg X --quality Q\n"
    "           --memory-budget SIZE --vae-tiling auto|on|off --device auto|cpu|cuda|cuda:N]   text to image;\n"
    "           the format follows -o: .png (default, with a parameters chunk), .jpg, .webp;\n"
    "           the memory plan keeps a job within SIZE (default: this machine's memory)\n"
    "  make-test-model DIR [--layout bfl|diffusers|comfyui|gguf] [--width tiny|real] [--blocks D,S]\n"
    "           [--text-layers N] [--quant TYPE] [--text-quant TYPE]   (gguf: transformer / T5 block types)\n"
    "                                       a random-weight model (tests, smoke checks; draws noise)\n"
    "  quantize IN OUT.gguf [--type q8_0|q4_0|q4_k|...]   GGUF with quantized matrices\n"
    "  devices                              the CPU (and GPUs) the engine can use, and its kernels there\n"
    "  help [COMMAND]                       this text, or a command's options (also COMMAND --help)\n"
    "  --version                            version, build type, backends compiled in\n"
    "\n"
    "Every --data has the environment twin FLUXPIPE_DATA; keys, webhook-secret and migrate take\n"
    "--store URL (FLUXPIPE_STORE) to work on a shared PostgreSQL store instead.\n";

int64_t now_ms() { return wall_clock_ms(); }

std::string env_or(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

// Read-only commands never create a data folder: a typo must not yield a new, empty one.
void require_data_folder(const char* cmd, const std::string& dir, bool need_store) {
  if (dir.empty()) throw UserError(std::string("[") + cmd + "] --data DIR is required (or FLUXPIPE_DATA)");
  if (!std::filesystem::is_directory(dir)) {
    throw UserError(std::string("[") + cmd + "] no data folder at '" + dir + "' (it is made by `fluxpipe serve` or `fluxpipe keys add`)");
  }
  if (need_store && !std::filesystem::exists(dir + "/fluxpipe.db")) {
    throw UserError(std::string("[") + cmd + "] '" + dir + "' holds no fluxpipe store (no fluxpipe.db)");
  }
}

std::string format_time(int64_t ms) {
  std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

int print_help(const std::string& text) {
  std::cout << text;
  return 0;
}

cli::Option data_option(std::string& dir) {
  return {"--data", "DIR", "the server's data folder [FLUXPIPE_DATA]", [&dir](const std::string& v) { dir = v; }};
}

cli::Option store_option(std::string& location) {
  return {"--store", "URL", "a shared store instead: postgresql://... or sqlite:PATH [FLUXPIPE_STORE]",
          [&location](const std::string& v) { location = v; }};
}

// The store a key or secret command works on: --store when given (every node of a shared store
// then accepts the same keys), else the data folder's. `create`: the folder may be made now.
std::unique_ptr<server::Store> open_cli_store(const char* cmd, const std::string& dir, const std::string& location,
                                              bool create) {
  if (!location.empty()) return server::open_store(location, dir);
  if (create) {
    if (dir.empty()) throw UserError(std::string("[") + cmd + "] --data DIR or --store URL is required (or FLUXPIPE_DATA)");
    umask(077);
    if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      throw IoError(std::string("[") + cmd + "] cannot create data folder '" + dir + "': " + std::strerror(errno));
    }
  } else {
    require_data_folder(cmd, dir, true);
  }
  return server::open_sqlite_store(dir + "/fluxpipe.db");
}

int cmd_keys(const std::vector<std::string>& args) {
  std::string verb = args.size() >= 2 ? args[1] : "";
  std::string dir = env_or("FLUXPIPE_DATA"), location = env_or("FLUXPIPE_STORE"), name, help;
  std::vector<std::string> positional;
  auto take = [&positional](const std::string& v) { positional.push_back(v); };
  if (verb == "add") {
    cli::Command c{"keys add", "--data DIR|--store URL [--name NAME]", "Creates an API key; the key itself is printed once, alone on the last line.",
                   {data_option(dir), store_option(location),
                    {"--name", "NAME", "a label shown by `keys list`", [&name](const std::string& v) { name = v; }}}, nullptr};
    if (!cli::parse(c, args, 2, &help)) return print_help(help);
    std::unique_ptr<server::Store> store = open_cli_store("keys add", dir, location, true);
    server::NewKey key = server::make_api_key(name, now_ms());
    store->add_key(key.record);
    std::cout << "created key " << key.record.id << (name.empty() ? "" : " (" + name + ")") << "; it is shown only now:\n"
              << key.secret << std::endl;
    return 0;
  }
  if (verb == "list") {
    cli::Command c{"keys list", "--data DIR|--store URL", "Lists the keys: id, name, created, state.",
                   {data_option(dir), store_option(location)}, nullptr};
    if (!cli::parse(c, args, 2, &help)) return print_help(help);
    std::unique_ptr<server::Store> store = open_cli_store("keys list", dir, location, false);
    for (const server::ApiKeyRecord& r : store->list_keys()) {
      std::cout << r.id << "\t" << (r.name.empty() ? "-" : r.name) << "\t" << format_time(r.created_ms) << "\t"
                << (r.revoked ? "revoked" : "active") << "\n";
    }
    return 0;
  }
  if (verb == "revoke") {
    cli::Command c{"keys revoke", "--data DIR|--store URL ID|NAME", "Revokes a key (every server refuses it within 2 s).",
                   {data_option(dir), store_option(location)}, take};
    if (!cli::parse(c, args, 2, &help)) return print_help(help);
    if (positional.size() != 1) throw UserError("[keys revoke] expected one key id or name");
    std::unique_ptr<server::Store> store = open_cli_store("keys revoke", dir, location, false);
    int n = store->revoke_key(positional[0]);
    if (n == 0) throw UserError("[keys revoke] no active key with id or name '" + positional[0] + "'");
    std::cout << "revoked " << n << " key" << (n == 1 ? "" : "s") << std::endl;
    return 0;
  }
  if (verb == "--help" || verb == "-h" || verb.empty()) {
    std::cout << "usage: fluxpipe keys add|list|revoke --data DIR ...  (fluxpipe keys add --help, ...)\n";
    return verb.empty() ? 2 : 0;
  }
  throw UserError("[keys] unknown verb '" + verb + "' (expected add, list or revoke)");
}

int cmd_webhook_secret(const std::vector<std::string>& args) {
  std::string dir = env_or("FLUXPIPE_DATA"), location = env_or("FLUXPIPE_STORE"), help;
  cli::Command c{"webhook-secret", "--data DIR|--store URL",
                 "Prints the whsec_... secret webhook receivers verify with (made on first use; with a shared "
                 "store, the one every node signs with).",
                 {data_option(dir), store_option(location)}, nullptr};
  if (!cli::parse(c, args, 1, &help)) return print_help(help);
  umask(077);
  if (!location.empty() && server::is_pg_location(location)) {
    std::unique_ptr<server::Store> store = server::open_store(location, dir);
    std::cout << server::webhook_secret_for(*store, dir, "") << std::endl;
    return 0;
  }
  require_data_folder("webhook-secret", dir, false);
  std::cout << server::load_or_create_webhook_secret(dir, "") << std::endl;
  return 0;
}

int cmd_migrate(const std::vector<std::string>& args) {
  std::string dir = env_or("FLUXPIPE_DATA"), location = env_or("FLUXPIPE_STORE"), help;
  cli::Command c{"migrate", "--store URL|--data DIR",
                 "Brings the store's schema to this version (serve does it too); refuses a newer schema.",
                 {store_option(location), data_option(dir)}, nullptr};
  if (!cli::parse(c, args, 1, &help)) return print_help(help);
  if (location.empty()) require_data_folder("migrate", dir, true);
  std::unique_ptr<server::Store> store = server::open_store(location, dir);
  std::cout << "store " << server::redact_store_location(location.empty() ? "sqlite:" + dir + "/fluxpipe.db" : location)
            << " is at schema version " << store->schema_version() << std::endl;
  return 0;
}

const char* kRunUsage =
    "usage: fluxpipe run COMPONENT [options]\n"
    "  transformer --weights T --inputs IN --output OUT [--config P.json]\n"
    "      reads img, img_ids, txt, txt_ids, y, timesteps (and guidance for FLUX.1-dev); writes output\n"
    "  vae-decode --weights AE --inputs IN --output OUT [--config AP.json]   reads decode.z, writes decode.out\n"
    "  vae-encode --weights AE --inputs IN --output OUT [--config AP.json]   reads encode.x, writes encode.out\n"
    "  sample --weights T --ae AE [--ae-config AP.json] --inputs IN --steps N --output OUT [--config P.json]\n"
    "      reads noise, txt, txt_ids, vec (guidance for dev); writes latents_packed_final, latents_unpacked,\n"
    "      image, image_u8\n"
    "  randn --seed S --shape 1,16,8,8 --dtype f32|bf16 --output OUT          writes noise (torch.randn)\n"
    "  clip --weights W --inputs IN --output OUT [--config config.json]\n"
    "      reads input_ids; writes last_hidden_state, pooler_output\n"
    "  t5 --weights W --inputs IN --output OUT [--config config.json] [--mask]\n"
    "      reads input_ids (and attention_mask with --mask; Flux uses none); writes last_hidden_state\n"
    "options: --compute f32 (default: every weight widened exactly) or bf16 (the fast path);\n"
    "         --config: the model's parameters under BFL's names (FluxParams / AutoEncoderParams JSON);\n"
    "         --device auto|cpu|cuda|cuda:N: where to compute (default auto) [FLUXPIPE_DEVICE];\n"
    "         the real FLUX.1 files need none.\n";

int cmd_run(const std::vector<std::string>& args) {
  if (args.size() < 2 || args[1] == "--help" || args[1] == "-h") {
    std::cout << kRunUsage;
    return args.size() < 2 ? 2 : 0;
  }
  ComponentRun r;
  r.component = args[1];
  r.device = env_or("FLUXPIPE_DEVICE");
  if (r.device.empty()) r.device = "auto";
  auto integer = [](const char* flag, const std::string& v, int64_t lo, int64_t hi) { return parse_integer("run", flag, v, lo, hi); };
  cli::Command c{"run", "COMPONENT [options]", "Runs one model component on named tensors (see `fluxpipe help run`).",
                 {{"--weights", "PATH", "weights of the component", [&](const std::string& v) { r.weights = v; }},
                  {"--inputs", "PATH", "safetensors with the named inputs", [&](const std::string& v) { r.inputs = v; }},
                  {"--output", "PATH", "safetensors to write", [&](const std::string& v) { r.output = v; }},
                  {"--config", "P.json", "the model's parameters under BFL's names", [&](const std::string& v) { r.config = v; }},
                  {"--ae", "PATH", "sample: the autoencoder", [&](const std::string& v) { r.ae = v; }},
                  {"--ae-config", "AP.json", "sample: AutoEncoderParams", [&](const std::string& v) { r.ae_config = v; }},
                  {"--compute", "f32|bf16", "arithmetic (default f32)", [&](const std::string& v) { r.compute = v; }},
                  {"--device", "auto|cpu|cuda|cuda:N", "where to compute (default auto: the first GPU, else the CPU) [FLUXPIPE_DEVICE]",
                   [&](const std::string& v) { r.device = v; }},
                  {"--dtype", "f32|bf16", "randn: the dtype drawn", [&](const std::string& v) { r.dtype = v; }},
                  {"--steps", "N", "sample: steps (1..1000)", [&](const std::string& v) { r.steps = static_cast<int>(integer("--steps", v, 1, 1000)); }},
                  {"--seed", "S", "randn: the seed", [&](const std::string& v) { r.seed = static_cast<uint64_t>(integer("--seed", v, 0, INT64_MAX)); }},
                  {"--guidance", "X", "sample with FLUX.1-dev: guidance (0..100)",
                   [&](const std::string& v) { r.guidance = static_cast<float>(cli::parse_number("run", "--guidance", v, 0, 100)); }},
                  {"--shape", "A,B,...", "randn: the shape", [&](const std::string& v) {
                     size_t start = 0;
                     while (start <= v.size()) {
                       size_t comma = v.find(',', start);
                       r.shape.push_back(integer("--shape", v.substr(start, comma == std::string::npos ? std::string::npos : comma - start), 1, INT64_MAX));
                       if (comma == std::string::npos) break;
                       start = comma + 1;
                     }
                   }},
                  {"--mask", nullptr, "t5: use attention_mask", [&](const std::string&) { r.mask = true; }}},
                 nullptr};
  std::string help;
  if (!cli::parse(c, args, 2, &help)) return print_help(kRunUsage);
  ComponentReport rep = run_component(r);
  std::cout << "wrote";
  for (const std::string& n : rep.written) std::cout << " " << n;
  std::cout << " to " << r.output << "\n";
  std::printf("time %.3f s on %s, peak memory %.1f MiB resident (activations peak %.1f MiB)\n", rep.seconds, rep.device.c_str(),
              static_cast<double>(rep.peak_rss_bytes) / (1 << 20), static_cast<double>(rep.arena_peak_bytes) / (1 << 20));
  return 0;
}

// fluxpipe quantize IN OUT.gguf --type q8_0|q4_0|q4_k|...
int cmd_quantize(const std::vector<std::string>& args) {
  std::string type = "q8_0", help;
  std::vector<std::string> files;
  cli::Command c{"quantize", "IN OUT.gguf [--type TYPE]", "Writes GGUF with quantized matrices (for small machines).",
                 {{"--type", "TYPE", "q8_0 (default), q4_0, q4_1, q5_0, q5_1, q4_k, q6_k", [&](const std::string& v) { type = v; }}},
                 [&](const std::string& v) { files.push_back(v); }};
  if (!cli::parse(c, args, 1, &help)) return print_help(help);
  if (files.size() != 2) throw UserError("[quantize] expected IN and OUT.gguf (see fluxpipe quantize --help)");
  auto t0 = std::chrono::steady_clock::now();
  int n = quantize_file(files[0], files[1], type);
  std::printf("wrote %s: %d matrices in %s, the rest unchanged (%.1f s)\n", files[1].c_str(), n, type.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}

// fluxpipe devices: what the engine can run on here.
int cmd_devices(const std::vector<std::string>& args) {
  std::string help;
  cli::Command c{"devices", "", "Prints the devices the engine can run on and the kernels each runs.", {}, nullptr};
  if (!cli::parse(c, args, 1, &help)) return print_help(help);
  for (const DeviceReport& d : devices()) {
    std::printf("%s\n", d.name.c_str());
    for (const auto& [what, value] : d.facts) std::printf("  %-18s %s\n", (what + ":").c_str(), value.c_str());
  }
  return 0;
}

// fluxpipe make-test-model DIR: a tiny random-weight model of FLUX.1's architecture.
int cmd_make_test_model(const std::vector<std::string>& args) {
  TestModelOptions o;
  std::vector<std::string> dirs;
  std::string help;
  cli::Command c{"make-test-model", "DIR [options]",
                 "Writes a random-weight model of FLUX.1's architecture (tests and smoke checks; it draws noise).",
                 {{"--layout", "bfl|diffusers|comfyui|gguf", "file layout (default bfl)", [&](const std::string& v) {
                     if (v != "bfl" && v != "diffusers" && v != "comfyui" && v != "gguf") {
                       throw UserError("[make-test-model] --layout: '" + v + "' is not bfl, diffusers, comfyui or gguf");
                     }
                     o.layout = v;
                   }},
                  {"--width", "tiny|real", "toy widths (default) or FLUX.1's real ones", [&](const std::string& v) {
                     if (v != "tiny" && v != "real") throw UserError("[make-test-model] --width: '" + v + "' is not tiny or real");
                     o.real_width = v == "real";
                   }},
                  {"--blocks", "D,S", "double and single blocks (default 1,1)", [&](const std::string& v) {
                     size_t comma = v.find(',');
                     if (comma == std::string::npos) throw UserError("[make-test-model] --blocks: expected D,S, got '" + v + "'");
                     o.depth = static_cast<int>(parse_integer("make-test-model", "--blocks", v.substr(0, comma), 1, 64));
                     o.single = static_cast<int>(parse_integer("make-test-model", "--blocks", v.substr(comma + 1), 1, 128));
                   }},
                  {"--text-layers", "N", "layers of each text encoder (default 1)", [&](const std::string& v) {
                     o.text_layers = static_cast<int>(parse_integer("make-test-model", "--text-layers", v, 1, 48));
                   }},
                  {"--quant", "TYPE", "gguf: the transformer's block type (default q8_0)", [&](const std::string& v) { o.quant = v; }},
                  {"--text-quant", "TYPE", "gguf: the T5 encoder as GGUF in this type", [&](const std::string& v) { o.text_quant = v; }}},
                 [&](const std::string& v) { dirs.push_back(v); }};
  if (!cli::parse(c, args, 1, &help)) return print_help(help);
  if (dirs.size() != 1) throw UserError("[make-test-model] expected one folder DIR (see fluxpipe make-test-model --help)");
  write_test_model(dirs[0], o);
  std::cout << "wrote a random-weight test model (not FLUX.1; it draws noise) to " << dirs[0] << std::endl;
  return 0;
}

// The image format `path` names, or UserError: the format follows the extension, never guessed.
std::string output_format(const std::string& path) {
  size_t dot = path.rfind('.');
  size_t slash = path.rfind('/');
  std::string ext = dot == std::string::npos || (slash != std::string::npos && dot < slash) ? "" : path.substr(dot);
  for (char& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (ext == ".png") return "png";
  if (ext == ".jpg" || ext == ".jpeg") return "jpeg";
  if (ext == ".webp") return "webp";
  throw UserError("[generate] -o '" + path + "': the format follows the extension: .png, .jpg/.jpeg or .webp");
}

// fluxpipe generate "prompt" -o out.png --model PATH [options]
int cmd_generate(const std::vector<std::string>& args) {
  // The server's ranges and defaults, so that a CLI job and an API job mean the same thing.
  const server::RequestLimits limits;
  GenerateJob job;
  job.width = job.height = limits.default_side;
  job.steps = 4;
  std::string out = "fluxpipe.png", model = env_or("FLUXPIPE_MODEL"), models_dir, help;
  int64_t seed = -1;
  int samples = 1;
  int quality = 92;   // JPEG / WebP
  bool have_prompt = false, cfg_given = false;
  EngineOptions engine_options;
  if (const char* m = std::getenv("FLUXPIPE_MEMORY_BUDGET")) engine_options.memory_budget = parse_bytes("generate", "FLUXPIPE_MEMORY_BUDGET", m);
  if (const char* m = std::getenv("FLUXPIPE_VRAM_BUDGET")) engine_options.vram_budget = parse_bytes("generate", "FLUXPIPE_VRAM_BUDGET", m);
  engine_options.device = env_or("FLUXPIPE_DEVICE");
  if (engine_options.device.empty()) engine_options.device = "auto";
  auto integer = [](const char* flag, const std::string& v, int64_t lo, int64_t hi) { return parse_integer("generate", flag, v, lo, hi); };
  cli::Command c{
      "generate", "\"prompt\" -o out.png --model PATH [options]",
      "Text to image; the format follows -o: .png (with a parameters chunk), .jpg/.jpeg or .webp.",
      {{"--output", "FILE", "where to write (default fluxpipe.png; more samples: name-1.png, ...)", [&](const std::string& v) { out = v; }, "-o"},
       {"--model", "PATH|NAME", "model folder or file, or a pulled model's name [FLUXPIPE_MODEL]", [&](const std::string& v) { model = v; }},
       {"--models", "DIR", "where pulled models live [FLUXPIPE_MODELS] (default ~/.cache/fluxpipe/models)",
        [&](const std::string& v) { models_dir = v; }},
       {"--width", "W", "64..1536, rounded to a multiple of 16 (default 1024)",
        [&](const std::string& v) { job.width = static_cast<int>(integer("--width", v, limits.min_side, limits.max_side)); }},
       {"--height", "H", "64..1536, rounded to a multiple of 16 (default 1024)",
        [&](const std::string& v) { job.height = static_cast<int>(integer("--height", v, limits.min_side, limits.max_side)); }},
       {"--steps", "N", "1..50 (default 4)", [&](const std::string& v) { job.steps = static_cast<int>(integer("--steps", v, 1, limits.max_steps)); }},
       {"--seed", "S", "0..4294967295, or -1 for a random one (default); image i uses (S + i) mod 2^32",
        [&](const std::string& v) { seed = integer("--seed", v, -1, server::kMaxSeed); }},
       {"--samples", "N", "images, 1..4 (default 1)", [&](const std::string& v) { samples = static_cast<int>(integer("--samples", v, 1, limits.max_samples)); }},
       {"--negative-prompt", "TEXT", "true classifier-free guidance against TEXT", [&](const std::string& v) { job.negative_prompt = v; }},
       {"--true-cfg", "X", "guidance scale with a negative prompt, 1..20 (default 4)", [&](const std::string& v) {
          job.true_cfg_scale = static_cast<float>(cli::parse_number("generate", "--true-cfg", v, 1, 20));
          cfg_given = true;
        }},
       {"--quality", "Q", "JPEG/WebP quality 1..100 (default 92)", [&](const std::string& v) { quality = static_cast<int>(integer("--quality", v, 1, 100)); }},
       {"--memory-budget", "SIZE", "resident memory the job is planned within, e.g. 8G [FLUXPIPE_MEMORY_BUDGET]",
        [&](const std::string& v) { engine_options.memory_budget = parse_bytes("generate", "--memory-budget", v); }},
       {"--vae-tiling", "auto|on|off", "tiled decoding (default auto)", [&](const std::string& v) { engine_options.vae_tiling = parse_tiling("generate", v); }},
       {"--device", "auto|cpu|cuda|cuda:N", "where to compute (default auto: the first GPU, else the CPU) [FLUXPIPE_DEVICE]",
        [&](const std::string& v) { engine_options.device = v; }},
       {"--vram-budget", "SIZE", "on a GPU: the device memory a job is planned within (default: what is free at load) [FLUXPIPE_VRAM_BUDGET]",
        [&](const std::string& v) { engine_options.vram_budget = parse_bytes("generate", "--vram-budget", v); }}},
      [&](const std::string& v) {
        if (have_prompt) throw UserError("[generate] unexpected argument '" + v + "' (quote the prompt)");
        job.prompt = v;
        have_prompt = true;
      }};
  if (!cli::parse(c, args, 1, &help)) return print_help(help);
  if (!have_prompt) throw UserError("[generate] no prompt given");
  if (model.empty()) throw UserError("[generate] --model PATH|NAME is required (or FLUXPIPE_MODEL)");
  model = cli::resolve_model_arg(model, models_dir, false);
  // Where the images go is checked before minutes of work, not after.
  std::string format = output_format(out);
  std::filesystem::path parent = std::filesystem::path(out).parent_path();
  if (parent.empty()) parent = ".";
  if (!std::filesystem::is_directory(parent) || access(parent.c_str(), W_OK) != 0) {
    throw UserError("[generate] -o '" + out + "': the folder '" + parent.string() + "' does not exist or is not writable");
  }
  job.width = server::round_to_16(job.width);
  job.height = server::round_to_16(job.height);
  if (!job.negative_prompt.empty() && !cfg_given) job.true_cfg_scale = limits.default_true_cfg_scale;
  if (job.negative_prompt.empty()) job.true_cfg_scale = 1.0f;
  if (seed < 0) seed = static_cast<int64_t>(std::random_device{}()) & server::kMaxSeed;
  for (int i = 0; i < samples; ++i) job.seeds.push_back(server::seed_of_image(seed, i));

  auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<Engine> engine = load_engine(model, engine_options);
  double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "device: %s\n", engine->device_name().c_str());
  bool tty = isatty(2);
  auto t1 = std::chrono::steady_clock::now();
  std::vector<Image> images = engine->generate(job, [&](int done, int total) {
    double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    if (tty) {
      int width = 30, filled = width * done / total;
      std::fprintf(stderr, "\r[%s%s] step %d/%d %.1f s", std::string(static_cast<size_t>(filled), '#').c_str(),
                   std::string(static_cast<size_t>(width - filled), '.').c_str(), done, total, el);
      if (done == total) std::fprintf(stderr, "\n");
    } else {
      std::fprintf(stderr, "step %d/%d %.1f s\n", done, total, el);
    }
    return true;
  });
  double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  if (engine->last_prompt_truncated()) std::fprintf(stderr, "fluxpipe: warning: the prompt was truncated to the text encoders' limits\n");
  for (size_t i = 0; i < images.size(); ++i) {
    std::string path = out;
    if (i > 0) {
      size_t dot = out.rfind('.');
      path = out.substr(0, dot) + "-" + std::to_string(i) + out.substr(dot);
    }
    std::string params = parameters_text(job, job.seeds[i], engine->model_name());
    std::vector<uint8_t> bytes = format == "jpeg" ? encode_jpeg(images[i], quality, params)
                                 : format == "webp" ? encode_webp(images[i], quality)
                                                    : encode_png(images[i], {{"parameters", params}, {"Software", "fluxpipe"}});
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!f) throw IoError("[generate] cannot write '" + path + "'");
    std::cout << path << " (seed " << job.seeds[i] << ")\n";
  }
  std::string stages;
  for (const auto& [name, s] : engine->last_stage_seconds()) stages += ", " + name + " " + std::to_string(s).substr(0, std::to_string(s).find('.') + 3) + " s";
  std::fprintf(stderr, "load %.2f s, generate %.2f s (%d steps, %zu images %dx%d%s), peak memory %.0f MiB\nmemory plan: %s\n",
               load_s, gen_s, job.steps, images.size(), job.width, job.height, stages.c_str(),
               static_cast<double>(peak_rss_bytes()) / (1 << 20), engine->last_memory_plan().c_str());
  return 0;
}

// fluxpipe tokenize clip|t5 [--tokenizer PATH] [--length N] "text": the ids as a JSON array.
int cmd_tokenize(const std::vector<std::string>& args) {
  std::string which, path, text, help;
  int length = 0;
  std::vector<std::string> positional;
  cli::Command c{"tokenize", "clip|t5 [--tokenizer PATH] [--length N] \"text\"", "Prints the token ids as a JSON array.",
                 {{"--tokenizer", "PATH", "a tokenizer folder or spiece.model (default: the shipped ones)", [&](const std::string& v) { path = v; }},
                  {"--length", "N", "pad/truncate to N tokens, 2..4096 (default 77 for clip, 256 for t5)",
                   [&](const std::string& v) { length = static_cast<int>(parse_integer("tokenize", "--length", v, 2, 4096)); }}},
                 [&](const std::string& v) { positional.push_back(v); }};
  if (!cli::parse(c, args, 1, &help)) return print_help(help);
  if (positional.size() != 2 || (positional[0] != "clip" && positional[0] != "t5")) {
    throw UserError("[tokenize] expected clip|t5 and one quoted text (see fluxpipe tokenize --help)");
  }
  bool clip = positional[0] == "clip";
  text = positional[1];
  if (length == 0) length = clip ? 77 : 256;
  TokenizedText e = tokenize_text(positional[0], path, text, length);
  std::string outs = "[";
  for (size_t i = 0; i < e.ids.size(); ++i) outs += (i ? ", " : "") + std::to_string(e.ids[i]);
  std::cout << outs << "]" << std::endl;
  if (e.truncated) std::cerr << "fluxpipe: warning: the text was truncated to " << length << " tokens\n";
  return 0;
}

int cmd_serve(const std::vector<std::string>& args) {
  std::vector<std::string> rest(args.begin() + 1, args.end());
  for (const std::string& a : rest) {
    if (a == "--help" || a == "-h") {
      std::cout << server::serve_usage();
      return 0;
    }
  }
  server::ServeOptions options = server::parse_serve_options(rest);
  // The data folder's lock first: a second server on the same folder fails in a moment,
  // not after loading 30 GB of weights.
  options.data_lock_fd = server::lock_data_folder(options.data_dir);
  // A model name: its pulled folder (pulled now with --pull; otherwise an error that says how).
  if (server::runs_jobs(options)) options.model_path = cli::resolve_model_arg(options.model_path, options.models_dir, options.pull_model);
  if (options.role == "worker" && options.model_path.empty()) {
    throw UserError("[serve] --role worker runs jobs: it needs --model PATH");
  }
  std::unique_ptr<Engine> engine;
  if (!options.model_path.empty() && server::runs_jobs(options)) engine = load_engine(options.model_path, options.engine);
  return server::run_server_until_signal(std::move(options), std::move(engine));
}

std::string version_text() {
  return std::string("fluxpipe ") + FLUXPIPE_VERSION + " (" + FLUXPIPE_BUILD_TYPE +
         " build; backends: cpu (AMX, AVX-512 BF16, AVX-512, AVX2 paths chosen at run time); cuda: " +
         (build_has_cuda() ? "built (see fluxpipe devices)" : "not built") + ")\n";
}

// `fluxpipe help COMMAND` and `fluxpipe COMMAND --help` print the same text.
int help_for(const std::string& command) {
  static const std::vector<std::string> tabled = {"generate", "quantize", "make-test-model", "tokenize", "webhook-secret",
                                                  "migrate", "devices"};
  if (command == "run") return print_help(kRunUsage);
  if (command == "serve") return print_help(fluxpipe::server::serve_usage());
  if (command == "pull") return cli::cmd_pull({"pull", "--help"});
  if (command == "models") return cli::cmd_models({"models", "--help"});
  if (command == "keys") {
    for (const char* verb : {"add", "list", "revoke"}) cmd_keys({"keys", verb, "--help"});
    return 0;
  }
  for (const std::string& t : tabled) {
    if (t == command) {
      std::vector<std::string> args = {command, "--help"};
      if (command == "generate") return cmd_generate(args);
      if (command == "quantize") return cmd_quantize(args);
      if (command == "make-test-model") return cmd_make_test_model(args);
      if (command == "tokenize") return cmd_tokenize(args);
      if (command == "migrate") return cmd_migrate(args);
      if (command == "devices") return cmd_devices(args);
      return cmd_webhook_secret(args);
    }
  }
  std::cerr << "fluxpipe: help: unknown command '" << command << "'\n\n" << kUsage;
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::cout << kUsage;
    return 2;
  }
  try {
    if (args[0] == "--version" || args[0] == "version") {
      std::cout << version_text();
      return 0;
    }
    if (args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
      if (args.size() >= 2) return help_for(args[1]);
      std::cout << kUsage;
      return 0;
    }
    if (args[0] == "serve") return cmd_serve(args);
    if (args[0] == "keys") return cmd_keys(args);
    if (args[0] == "webhook-secret") return cmd_webhook_secret(args);
    if (args[0] == "devices") return cmd_devices(args);
    if (args[0] == "migrate") return cmd_migrate(args);
    if (args[0] == "run") return cmd_run(args);
    if (args[0] == "tokenize") return cmd_tokenize(args);
    if (args[0] == "generate") return cmd_generate(args);
    if (args[0] == "make-test-model") return cmd_make_test_model(args);
    if (args[0] == "quantize") return cmd_quantize(args);
    if (args[0] == "pull") return cli::cmd_pull(args);
    if (args[0] == "models") return cli::cmd_models(args);
    std::cerr << "fluxpipe: unknown command '" << args[0] << "'\n\n" << kUsage;
    return 2;
  } catch (const fluxpipe::UserError& e) {
    std::cerr << "fluxpipe: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "fluxpipe: " << e.what() << "\n";
    return 1;
  }
}
