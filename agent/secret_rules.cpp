// The secret deny-list: file names (and, for key files, first bytes) that mark credentials which
// must not end up in a snapshot, and the gitignore-syntax allow-list that overrides it.
#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/ignore_pattern.hpp"
#include "agent/source_listing.hpp"

namespace envd::agent {
namespace {

// Templates committed on purpose so that others know which variables to set.
constexpr std::array<std::string_view, 3> k_env_templates = {".env.example", ".env.sample",
                                                             ".env.template"};
constexpr std::array<std::string_view, 4> k_ssh_key_prefixes = {"id_rsa", "id_dsa", "id_ecdsa",
                                                                "id_ed25519"};

struct NamedFile {
  std::string_view path_suffix;  // last path components, '/'-separated
  std::string_view rule;
};
// Well-known credential stores of command-line tools, matched by their last path components.
constexpr std::array<NamedFile, 8> k_credential_files = {{
    {".aws/credentials", "AWS credentials (.aws/credentials)"},
    {".netrc", "netrc credentials (.netrc)"},
    {"_netrc", "netrc credentials (_netrc)"},
    {".pypirc", "PyPI credentials (.pypirc)"},
    {".git-credentials", "git credentials (.git-credentials)"},
    {".docker/config.json", "Docker registry credentials (.docker/config.json)"},
    {".kube/config", "Kubernetes credentials (.kube/config)"},
    {".config/gcloud/credentials.db", "Google Cloud credentials (gcloud/credentials.db)"},
}};

bool ends_with_components(std::string_view path, std::string_view suffix) {
  if (!path.ends_with(suffix)) return false;
  return path.size() == suffix.size() || path[path.size() - suffix.size() - 1] == '/';
}

// PEM "-----BEGIN RSA PRIVATE KEY-----", "... EC PRIVATE KEY-----", "... ENCRYPTED PRIVATE
// KEY-----", OpenSSH's "-----BEGIN OPENSSH PRIVATE KEY-----"; certificates and public keys say
// "CERTIFICATE" or "PUBLIC KEY" instead.
bool holds_private_key(std::string_view head) {
  return head.find("PRIVATE KEY-----") != std::string_view::npos;
}

}  // namespace

std::optional<std::string> secret_rule_for(std::string_view relative_path, std::string_view head) {
  const std::size_t slash = relative_path.rfind('/');
  const std::string_view name =
      slash == std::string_view::npos ? relative_path : relative_path.substr(slash + 1);

  if (name == ".env" || name.starts_with(".env.")) {
    for (std::string_view t : k_env_templates) {
      if (name == t) return std::nullopt;
    }
    return ".env file (.env, .env.*)";
  }
  if (!name.ends_with(".pub")) {
    for (std::string_view prefix : k_ssh_key_prefixes) {
      if (name.starts_with(prefix))
        return "SSH private key (id_rsa*, id_dsa*, id_ecdsa*, id_ed25519*)";
    }
  }
  if (name.ends_with(".p12") || name.ends_with(".pfx")) {
    // PKCS#12 is binary and exists to bundle a private key with its certificate.
    return "PKCS#12 key store (*.p12, *.pfx)";
  }
  if (name.ends_with(".ppk")) return "PuTTY private key (*.ppk)";
  if (name.ends_with(".pem") || name.ends_with(".key")) {
    // Certificates and public keys are routinely committed as *.pem; only the content tells them
    // from a private key. An empty head (an empty file, or a symlink, whose content is not
    // captured) holds no key.
    if (holds_private_key(head)) return "private key (*.pem, *.key)";
    return std::nullopt;
  }
  for (const NamedFile& file : k_credential_files) {
    if (ends_with_components(relative_path, file.path_suffix)) return std::string(file.rule);
  }
  // A Google Cloud service-account key: JSON with a PEM private key inside, any file name.
  if (name.ends_with(".json") && head.find("\"service_account\"") != std::string_view::npos &&
      head.find("\"private_key\"") != std::string_view::npos) {
    return "Google Cloud service account key (*.json with \"private_key\")";
  }
  return std::nullopt;
}

bool secret_rule_needs_head(std::string_view relative_path) {
  return relative_path.ends_with(".pem") || relative_path.ends_with(".key") ||
         relative_path.ends_with(".json");
}

bool secret_allowed(std::string_view relative_path,
                    const std::vector<std::string>& allow_patterns) {
  if (allow_patterns.empty()) return false;
  IgnoreRules rules;
  std::string text;
  for (const std::string& pattern : allow_patterns) text += pattern + "\n";
  rules.push("", text, "allow");
  return rules.match_with_parents(relative_path, EntryKind::file).has_value();
}

}  // namespace envd::agent
