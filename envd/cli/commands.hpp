// The envd subcommands, each registering its options on a CLI11 app and running when chosen.
#pragma once

namespace CLI {
class App;
}

namespace envd::cli {

// Each registers its subcommand on `app`; the subcommand's callback sets `exit_code`.
void add_snapshot_command(CLI::App& app, int& exit_code);
void add_push_command(CLI::App& app, int& exit_code);
void add_builder_command(CLI::App& app, int& exit_code);
void add_version_command(CLI::App& app, int& exit_code);
// Registers `mirror` under the `builder` subcommand.
void add_builder_mirror_command(CLI::App& builder_app, int& exit_code);
void add_diff_command(CLI::App& app, int& exit_code);
void add_watch_command(CLI::App& app, int& exit_code);
// Registers `node` with pull, run, ls and gc; returns it so `serve` can be added under it.
CLI::App* add_node_command(CLI::App& app, int& exit_code);
// Registers `serve` under the `node` subcommand.
void add_node_serve_command(CLI::App& node_app, int& exit_code);

}  // namespace envd::cli
