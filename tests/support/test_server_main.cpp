// fluxpipe-test-server: `fluxpipe serve` with the test-double engine, for tests that need
// a separate server process (kill -9 and restart) and for the load benchmark.
// Extra options: --fake-step-ms N (sleep per step), --port-file PATH (write the bound port).
#include <signal.h>

#include <fstream>
#include <iostream>

#include "core/error.h"
#include "fake_engine.h"
#include "server/api_server.h"
#include "server/options.h"

int main(int argc, char** argv) {
  using namespace fluxpipe;
  std::vector<std::string> args;
  int step_ms = 0;
  std::string port_file;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--fake-step-ms" && i + 1 < argc) {
      step_ms = std::stoi(argv[++i]);
    } else if (a == "--port-file" && i + 1 < argc) {
      port_file = argv[++i];
    } else {
      args.push_back(a);
    }
  }
  try {
    server::block_stop_signals();
    server::ApiServer srv(server::parse_serve_options(args), std::make_unique<testing::FakeEngine>(step_ms));
    int port = srv.start();
    if (!port_file.empty()) {
      std::ofstream(port_file + ".tmp") << port << "\n";
      std::rename((port_file + ".tmp").c_str(), port_file.c_str());
    }
    server::wait_for_stop_signal();
    srv.stop();
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "fluxpipe-test-server: " << e.what() << "\n";
    return 1;
  }
}
