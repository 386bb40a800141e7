// The envd subcommands, each registering its options on a CLI11 app and running when chosen.
#pragma once

namespace CLI {
class App;
}

namespace envd::cli {

// Registers `envd snapshot` on `app`; returns a flag-holder whose run() is invoked by main.
void add_snapshot_command(CLI::App& app, int& exit_code);
void add_version_command(CLI::App& app, int& exit_code);

}  // namespace envd::cli
