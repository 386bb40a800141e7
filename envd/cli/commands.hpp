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

}  // namespace envd::cli
