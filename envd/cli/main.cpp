// envd: the command-line entry point. Parses the command line (usage errors exit 2, DESIGN.md §5)
// and runs the chosen subcommand.
#include <CLI/CLI.hpp>

#include "envd/cli/commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"envd: the software on your laptop, on every worker of your cluster", "envd"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("envd ") + ENVD_VERSION);
  int exit_code = 0;
  envd::cli::add_snapshot_command(app, exit_code);
  envd::cli::add_push_command(app, exit_code);
  envd::cli::add_diff_command(app, exit_code);
  envd::cli::add_watch_command(app, exit_code);
  envd::cli::add_builder_command(app, exit_code);
  envd::cli::add_node_serve_command(*envd::cli::add_node_command(app, exit_code), exit_code);
  envd::cli::add_version_command(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return exit_code;
}
