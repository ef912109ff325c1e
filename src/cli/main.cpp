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
#include "pipeline/components.h"
#include "pipeline/test_model.h"
#include "tokenizer/tokenizers.h"
#include "pipeline/pipeline.h"
#include "server/api_server.h"
#include "server/keys.h"
#include "server/options.h"
#include "server/store.h"

namespace {

using namespace fluxpipe;

const char* kUsage =
    "usage: fluxpipe <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve --data DIR [--listen HOST:PORT] [--model PATH]   serve the generate v3 API\n"
    "  keys add --data DIR [--name NAME]    create an API key (printed alone on the last line)\n"
    "  keys list --data DIR                 list keys (id, name, created, state)\n"
    "  keys revoke --data DIR ID|NAME       revoke a key\n"
    "  webhook-secret --data DIR            print the secret that signs webhooks\n"
    "  run COMPONENT --weights W --inputs IN --output OUT [--config P.json] [--compute f32|bf16]\n"
    "                                       run transformer | vae-decode | vae-encode | sample | randn\n"
    "                                       on named tensors (see `fluxpipe help run`)\n"
    "  tokenize clip|t5 [--tokenizer PATH] [--length N] \"text\"   the ids as a JSON array\n"
    "  generate \"prompt\" -o out.png --model PATH [--width W --height H --steps N --seed S\n"
    "           --samples N --negative-prompt TEXT --true-cfg X --quality Q\n"
    "           --memory-budget SIZE --vae-tiling auto|on|off]   text to image;\n"
    "           the format follows -o: .png (default, with a parameters chunk), .jpg, .webp;\n"
    "           the memory plan keeps a job within SIZE (default: this machine's memory)\n"
    "  make-test-model DIR [--layout bfl|diffusers|comfyui|gguf] [--width tiny|real] [--blocks D,S]\n"
    "           [--text-layers N] [--quant TYPE] [--text-quant TYPE]   (gguf: transformer / T5 block types)\n"
    "                                       a random-weight model (tests, smoke checks; draws noise)\n"
    "  quantize IN OUT.gguf [--type q8_0|q4_0|q4_k|...]   GGUF with quantized matrices\n"
    "  help [COMMAND]                       this text, or a command's options\n"
    "\n"
    "Every --data has the environment twin FLUXPIPE_DATA.\n";

int64_t now_ms() { return wall_clock_ms(); }

struct KeyArgs {
  std::string data_dir;
  std::string name;
  std::vector<std::string> positional;
};

KeyArgs parse_key_args(const std::vector<std::string>& args, size_t from) {
  KeyArgs k;
  if (const char* d = std::getenv("FLUXPIPE_DATA")) k.data_dir = d;
  for (size_t i = from; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](const char* flag) {
      if (i + 1 >= args.size()) throw UserError(std::string("[keys] ") + flag + " needs a value");
      return args[++i];
    };
    if (a == "--data") {
      k.data_dir = value("--data");
    } else if (a.rfind("--data=", 0) == 0) {
      k.data_dir = a.substr(7);
    } else if (a == "--name") {
      k.name = value("--name");
    } else if (a.rfind("--name=", 0) == 0) {
      k.name = a.substr(7);
    } else if (a.rfind("--", 0) == 0) {
      throw UserError("[keys] unknown option '" + a + "'");
    } else {
      k.positional.push_back(a);
    }
  }
  if (k.data_dir.empty()) throw UserError("[keys] --data DIR is required (or FLUXPIPE_DATA)");
  if (mkdir(k.data_dir.c_str(), 0755) != 0 && errno != EEXIST) {
    throw IoError("[keys] cannot create data folder '" + k.data_dir + "': " + std::strerror(errno));
  }
  return k;
}

std::string format_time(int64_t ms) {
  std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

int cmd_keys(const std::vector<std::string>& args) {
  if (args.size() < 2) throw UserError("[keys] expected add, list or revoke");
  const std::string& verb = args[1];
  KeyArgs k = parse_key_args(args, 2);
  std::unique_ptr<server::Store> store = server::open_sqlite_store(k.data_dir + "/fluxpipe.db");
  if (verb == "add") {
    if (!k.positional.empty()) throw UserError("[keys add] unexpected argument '" + k.positional[0] + "'");
    server::NewKey key = server::make_api_key(k.name, now_ms());
    store->add_key(key.record);
    std::cout << "created key " << key.record.id << (k.name.empty() ? "" : " (" + k.name + ")")
              << "; it is shown only now:\n"
              << key.secret << std::endl;
    return 0;
  }
  if (verb == "list") {
    for (const server::ApiKeyRecord& r : store->list_keys()) {
      std::cout << r.id << "\t" << (r.name.empty() ? "-" : r.name) << "\t" << format_time(r.created_ms) << "\t"
                << (r.revoked ? "revoked" : "active") << "\n";
    }
    return 0;
  }
  if (verb == "revoke") {
    if (k.positional.size() != 1) throw UserError("[keys revoke] expected one key id or name");
    int n = store->revoke_key(k.positional[0]);
    if (n == 0) throw UserError("[keys revoke] no active key with id or name '" + k.positional[0] + "'");
    std::cout << "revoked " << n << " key" << (n == 1 ? "" : "s") << std::endl;
    return 0;
  }
  throw UserError("[keys] unknown verb '" + verb + "' (expected add, list or revoke)");
}

int cmd_webhook_secret(const std::vector<std::string>& args) {
  KeyArgs k = parse_key_args(args, 1);
  std::cout << server::load_or_create_webhook_secret(k.data_dir, "") << std::endl;
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
    "         the real FLUX.1 files need none.\n";

int cmd_run(const std::vector<std::string>& args) {
  if (args.size() < 2 || args[1] == "--help" || args[1] == "-h") {
    std::cout << kRunUsage;
    return args.size() < 2 ? 2 : 0;
  }
  ComponentRun r;
  r.component = args[1];
  for (size_t i = 2; i < args.size(); ++i) {
    std::string flag = args[i];
    std::string value;
    if (flag == "--mask") {
      r.mask = true;
      continue;
    }
    if (size_t eq = flag.find('='); eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    } else {
      if (i + 1 >= args.size()) throw UserError("[run] " + flag + " needs a value");
      value = args[++i];
    }
    auto number = [&](const char* what, const std::string& text) {
      return parse_integer("run", what, text, INT64_MIN, INT64_MAX);
    };
    if (flag == "--weights") r.weights = value;
    else if (flag == "--inputs") r.inputs = value;
    else if (flag == "--output") r.output = value;
    else if (flag == "--config") r.config = value;
    else if (flag == "--ae") r.ae = value;
    else if (flag == "--ae-config") r.ae_config = value;
    else if (flag == "--compute") r.compute = value;
    else if (flag == "--dtype") r.dtype = value;
    else if (flag == "--steps") r.steps = static_cast<int>(number("--steps", value));
    else if (flag == "--seed") r.seed = static_cast<uint64_t>(number("--seed", value));
    else if (flag == "--guidance") r.guidance = std::stof(value);
    else if (flag == "--shape") {
      size_t start = 0;
      while (start <= value.size()) {
        size_t comma = value.find(',', start);
        r.shape.push_back(number("--shape", value.substr(start, comma == std::string::npos ? std::string::npos : comma - start)));
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else {
      throw UserError("[run] unknown option '" + flag + "' (see fluxpipe help run)");
    }
  }
  ComponentReport rep = run_component(r);
  std::cout << "wrote";
  for (const std::string& n : rep.written) std::cout << " " << n;
  std::cout << " to " << r.output << "\n";
  std::printf("time %.3f s, peak memory %.1f MiB resident (activations peak %.1f MiB)\n", rep.seconds,
              static_cast<double>(rep.peak_rss_bytes) / (1 << 20), static_cast<double>(rep.arena_peak_bytes) / (1 << 20));
  return 0;
}

// fluxpipe quantize IN OUT.gguf --type q8_0|q4_0|q4_k|...
int cmd_quantize(const std::vector<std::string>& args) {
  std::string type = "q8_0";
  std::vector<std::string> files;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--type" && i + 1 < args.size()) type = args[++i];
    else if (!args[i].empty() && args[i][0] == '-') throw UserError("[quantize] unknown option '" + args[i] + "'");
    else files.push_back(args[i]);
  }
  if (files.size() != 2) throw UserError("[quantize] usage: fluxpipe quantize IN OUT.gguf [--type q8_0|q4_0|q4_k|...]");
  auto t0 = std::chrono::steady_clock::now();
  int n = quantize_file(files[0], files[1], type);
  std::printf("wrote %s: %d matrices in %s, the rest unchanged (%.1f s)\n", files[1].c_str(), n, type.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}

// fluxpipe make-test-model DIR: a tiny random-weight model of FLUX.1's architecture.
int cmd_make_test_model(const std::vector<std::string>& args) {
  if (args.size() < 2) {
    throw UserError("[make-test-model] usage: fluxpipe make-test-model DIR [--layout bfl|diffusers|comfyui|gguf] [--width tiny|real] "
                    "[--blocks D,S] [--text-layers N] [--quant TYPE] [--text-quant TYPE]");
  }
  std::string dir = args[1];
  TestModelOptions o;
  for (size_t i = 2; i < args.size(); ++i) {
    std::string v = i + 1 < args.size() ? args[i + 1] : "";
    if (args[i] == "--layout" && !v.empty()) {
      o.layout = v;
    } else if (args[i] == "--width" && (v == "tiny" || v == "real")) {
      o.real_width = v == "real";
    } else if (args[i] == "--blocks" && v.find(',') != std::string::npos) {
      o.depth = std::stoi(v.substr(0, v.find(',')));
      o.single = std::stoi(v.substr(v.find(',') + 1));
    } else if (args[i] == "--text-layers" && !v.empty()) {
      o.text_layers = std::stoi(v);
    } else if (args[i] == "--quant" && !v.empty()) {
      o.quant = v;
    } else if (args[i] == "--text-quant" && !v.empty()) {
      o.text_quant = v;
    } else {
      throw UserError("[make-test-model] bad option '" + args[i] + "'");
    }
    ++i;
  }
  write_test_model(dir, o);
  std::cout << "wrote a random-weight test model (not FLUX.1; it draws noise) to " << dir << std::endl;
  return 0;
}

// fluxpipe generate "prompt" -o out.png --model PATH [options]
int cmd_generate(const std::vector<std::string>& args) {
  GenerateJob job;
  job.width = job.height = 1024;
  job.steps = 4;
  std::string out = "fluxpipe.png", model;
  if (const char* m = std::getenv("FLUXPIPE_MODEL")) model = m;
  int64_t seed = -1;
  int samples = 1;
  int quality = 92;   // JPEG / WebP
  bool have_prompt = false;
  EngineOptions engine_options;
  if (const char* m = std::getenv("FLUXPIPE_MEMORY_BUDGET")) engine_options.memory_budget = parse_bytes("generate", "FLUXPIPE_MEMORY_BUDGET", m);
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw UserError("[generate] " + a + " needs a value");
      return args[++i];
    };
    auto integer = [&](const char* what, long long lo, long long hi) { return parse_integer("generate", what, value(), lo, hi); };
    if (a == "-o" || a == "--output") out = value();
    else if (a == "--model") model = value();
    else if (a == "--width") job.width = static_cast<int>(integer("--width", 64, 1536));
    else if (a == "--height") job.height = static_cast<int>(integer("--height", 64, 1536));
    else if (a == "--steps") job.steps = static_cast<int>(integer("--steps", 1, 100));
    else if (a == "--seed") seed = integer("--seed", -1, (1LL << 62));
    else if (a == "--samples") samples = static_cast<int>(integer("--samples", 1, 4));
    else if (a == "--negative-prompt") job.negative_prompt = value();
    else if (a == "--true-cfg") job.true_cfg_scale = std::stof(value());
    else if (a == "--quality") quality = static_cast<int>(integer("--quality", 1, 100));
    else if (a == "--memory-budget") engine_options.memory_budget = parse_bytes("generate", a, value());
    else if (a == "--vae-tiling") engine_options.vae_tiling = parse_tiling("generate", value());
    else if (!a.empty() && a[0] == '-') throw UserError("[generate] unknown option '" + a + "'");
    else if (!have_prompt) {
      job.prompt = a;
      have_prompt = true;
    } else {
      throw UserError("[generate] unexpected argument '" + a + "' (quote the prompt)");
    }
  }
  if (!have_prompt) throw UserError("[generate] no prompt given");
  if (model.empty()) throw UserError("[generate] --model PATH is required (or FLUXPIPE_MODEL)");
  job.width = (job.width + 8) / 16 * 16;
  job.height = (job.height + 8) / 16 * 16;
  if (!job.negative_prompt.empty() && job.true_cfg_scale <= 1.0f) job.true_cfg_scale = 4.0f;
  if (seed < 0) seed = static_cast<int64_t>(std::random_device{}() & 0x7fffffff);
  for (int i = 0; i < samples; ++i) job.seeds.push_back(seed + i);

  auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<Engine> engine = load_engine(model, engine_options);
  double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
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
      path = (dot == std::string::npos ? out : out.substr(0, dot)) + "-" + std::to_string(i) + (dot == std::string::npos ? "" : out.substr(dot));
    }
    std::string params = job.prompt + "\n" + (job.negative_prompt.empty() ? "" : "Negative prompt: " + job.negative_prompt + "\n") +
                         "Steps: " + std::to_string(job.steps) + ", Sampler: Euler, Seed: " + std::to_string(job.seeds[i]) +
                         ", Size: " + std::to_string(job.width) + "x" + std::to_string(job.height) + ", Model: " + engine->model_name();
    // The format follows the file name: .jpg/.jpeg, .webp, anything else PNG.
    std::string ext = path.substr(path.rfind('.') == std::string::npos ? path.size() : path.rfind('.'));
    for (char& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    std::vector<uint8_t> png = ext == ".jpg" || ext == ".jpeg" ? encode_jpeg(images[i], quality, params)
                               : ext == ".webp"                ? encode_webp(images[i], quality)
                                                               : encode_png(images[i], {{"parameters", params}, {"Software", "fluxpipe"}});
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(png.data()), static_cast<std::streamsize>(png.size()));
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
  if (args.size() < 3 || (args[1] != "clip" && args[1] != "t5")) {
    throw UserError("[tokenize] usage: fluxpipe tokenize clip|t5 [--tokenizer PATH] [--length N] \"text\"");
  }
  bool clip = args[1] == "clip";
  std::string path, text;
  int length = clip ? 77 : 256;
  bool have_text = false;
  for (size_t i = 2; i < args.size(); ++i) {
    if (args[i] == "--tokenizer" && i + 1 < args.size()) {
      path = args[++i];
    } else if (args[i] == "--length" && i + 1 < args.size()) {
      length = static_cast<int>(parse_integer("tokenize", "--length", args[++i], 2, 4096));
    } else if (!have_text) {
      text = args[i];
      have_text = true;
    } else {
      throw UserError("[tokenize] unexpected argument '" + args[i] + "' (quote the text)");
    }
  }
  if (!have_text) throw UserError("[tokenize] no text given");
  std::string base = tokenizer::shipped_tokenizer_dir();
  tokenizer::Encoding e;
  if (clip) {
    // A tokenizer folder (vocab.json + merges.txt); a model folder's tokenizer/ works too.
    std::string dir = path.empty() ? base + "/clip" : path;
    e = tokenizer::ClipTokenizer(dir).encode(text, length);
  } else {
    std::string file = path.empty() ? base + "/t5-v1_1-xxl/spiece.model" : path;
    if (std::filesystem::is_directory(file)) file += "/spiece.model";
    e = tokenizer::T5Tokenizer(file).encode(text, length);
  }
  std::string out = "[";
  for (size_t i = 0; i < e.ids.size(); ++i) out += (i ? ", " : "") + std::to_string(e.ids[i]);
  std::cout << out << "]" << std::endl;
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
  std::unique_ptr<Engine> engine;
  if (!options.model_path.empty()) engine = load_engine(options.model_path, options.engine);
  return server::run_server_until_signal(std::move(options), std::move(engine));
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    if (args.size() >= 2 && args[1] == "run") {
      std::cout << kRunUsage;
    } else if (args.size() >= 2 && args[1] == "serve") {
      std::cout << fluxpipe::server::serve_usage();
    } else {
      std::cout << kUsage;
    }
    return args.empty() ? 2 : 0;
  }
  try {
    if (args[0] == "serve") return cmd_serve(args);
    if (args[0] == "keys") return cmd_keys(args);
    if (args[0] == "webhook-secret") return cmd_webhook_secret(args);
    if (args[0] == "run") return cmd_run(args);
    if (args[0] == "tokenize") return cmd_tokenize(args);
    if (args[0] == "generate") return cmd_generate(args);
    if (args[0] == "make-test-model") return cmd_make_test_model(args);
    if (args[0] == "quantize") return cmd_quantize(args);
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
