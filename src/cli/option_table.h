// fluxpipe CLI: one option table per subcommand, and the one parser that reads them.
//
// Every subcommand declares its options as a table (flag, value name, help, setter); the parser
// takes `--flag value` and `--flag=value`, answers `--help`/`-h` with the table's usage before
// anything else happens (no side effects), and names the subcommand and the flag in every error.
// Thread-safety: plain functions over the caller's table.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/parse.h"

namespace fluxpipe::cli {

struct Option {
  const char* flag;         // "--width"; a second spelling may follow as `alias`
  const char* value_name;   // nullptr: a switch
  const char* help;
  std::function<void(const std::string&)> set;
  const char* alias = nullptr;   // e.g. "-o"
};

struct Command {
  const char* name;          // "generate", "keys add"
  const char* synopsis;      // what follows the name in the usage line
  const char* summary;       // one sentence
  std::vector<Option> options;
  // Positional arguments, in order; nullptr: none allowed.
  std::function<void(const std::string&)> positional;
};

// The usage text of `cmd`: synopsis, summary, then one line per option.
inline std::string usage(const Command& cmd) {
  std::string s = std::string("usage: fluxpipe ") + cmd.name + " " + cmd.synopsis + "\n" + cmd.summary + "\n";
  if (!cmd.options.empty()) s += "\noptions:\n";
  for (const Option& o : cmd.options) {
    std::string left = std::string("  ") + (o.alias ? std::string(o.alias) + ", " : "") + o.flag +
                       (o.value_name ? std::string(" ") + o.value_name : "");
    left.resize(std::max<size_t>(left.size() + 1, 30), ' ');
    s += left + o.help + "\n";
  }
  s += "  --help" + std::string(24, ' ') + "this text\n";
  return s;
}

// Parses args[from..]. Returns false when --help was asked for (the usage is in `help_text`).
// Throws UserError("[name] ...") for unknown options, missing values and what setters refuse.
inline bool parse(const Command& cmd, const std::vector<std::string>& args, size_t from, std::string* help_text) {
  for (size_t i = from; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") {
      *help_text = usage(cmd);
      return false;
    }
  }
  bool options_done = false;
  for (size_t i = from; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg == "--" && !options_done) {
      options_done = true;
      continue;
    }
    bool looks_like_option = !options_done && arg.size() > 1 && arg[0] == '-' &&
                             !(arg.size() > 1 && (std::isdigit(static_cast<unsigned char>(arg[1])) || arg[1] == '.'));
    if (!looks_like_option) {
      if (!cmd.positional) throw UserError(std::string("[") + cmd.name + "] unexpected argument '" + arg + "'");
      cmd.positional(arg);
      continue;
    }
    std::string value;
    bool inline_value = false;
    if (size_t eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      inline_value = true;
    }
    const Option* match = nullptr;
    for (const Option& o : cmd.options) {
      if (arg == o.flag || (o.alias && arg == o.alias)) match = &o;
    }
    if (!match) {
      throw UserError(std::string("[") + cmd.name + "] unknown option '" + args[i] + "' (see fluxpipe " + cmd.name + " --help)");
    }
    if (!match->value_name) {
      if (inline_value) throw UserError(std::string("[") + cmd.name + "] " + match->flag + " takes no value");
      match->set("");
      continue;
    }
    if (!inline_value) {
      if (i + 1 >= args.size()) {
        throw UserError(std::string("[") + cmd.name + "] " + match->flag + " needs a value " + match->value_name);
      }
      value = args[++i];
    }
    match->set(value);
  }
  return true;
}

// A number in [lo, hi] for `flag` of command `cmd`, or UserError naming both and the range.
inline double parse_number(const char* cmd, const std::string& flag, const std::string& text, double lo, double hi) {
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || !(x >= lo && x <= hi)) {
    throw UserError(std::string("[") + cmd + "] " + flag + ": '" + text + "' is not a number in " + std::to_string(lo).substr(0, std::to_string(lo).find('.') + 2) +
                    ".." + std::to_string(hi).substr(0, std::to_string(hi).find('.') + 2));
  }
  return x;
}

}  // namespace fluxpipe::cli
