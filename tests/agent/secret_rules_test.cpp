// Tests of the secret deny-list and allow patterns, and of the gitignore-syntax matcher they and
// .envdignore share (agent/ignore_pattern.hpp).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "agent/ignore_pattern.hpp"
#include "agent/source_listing.hpp"

namespace envd::agent {
namespace {

constexpr std::string_view k_rsa_key =
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA...\n-----END RSA PRIVATE KEY-----\n";
constexpr std::string_view k_certificate =
    "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIE...\n-----END CERTIFICATE-----\n";

bool blocked(std::string_view path, std::string_view head = {}) {
  return secret_rule_for(path, head).has_value();
}

}  // namespace

TEST_SUITE("secret_rule_for") {
  TEST_CASE(".env files are blocked, their templates are not") {
    CHECK(secret_rule_for(".env", "") == std::optional<std::string>(".env file (.env, .env.*)"));
    CHECK(blocked("app/.env"));
    CHECK(blocked(".env.local"));
    CHECK(blocked("deploy/.env.production"));
    CHECK_FALSE(blocked(".env.example"));
    CHECK_FALSE(blocked("app/.env.sample"));
    CHECK_FALSE(blocked(".env.template"));
    CHECK_FALSE(blocked("environment.yml"));
    CHECK_FALSE(blocked(".envrc.md"));
    CHECK_FALSE(blocked(".env/bin/python"));  // a virtualenv named .env is a directory
  }

  TEST_CASE("SSH private keys are blocked, public keys are not") {
    for (const char* name :
         {"id_rsa", ".ssh/id_dsa", "keys/id_ecdsa", "id_ed25519", "id_rsa_old", "id_ed25519_sk"}) {
      CAPTURE(name);
      CHECK(blocked(name));
    }
    CHECK(secret_rule_for("id_rsa", "")->find("SSH private key") != std::string::npos);
    CHECK_FALSE(blocked("id_rsa.pub"));
    CHECK_FALSE(blocked(".ssh/id_ed25519.pub"));
    CHECK_FALSE(blocked("my_id_rsa_notes.txt"));
  }

  TEST_CASE("*.pem and *.key are blocked only when they hold a private key") {
    CHECK(secret_rule_for("tls/server.pem", k_rsa_key) ==
          std::optional<std::string>("private key (*.pem, *.key)"));
    CHECK(blocked("server.key", "-----BEGIN PRIVATE KEY-----\nMIIE..."));
    CHECK(blocked("ec.pem", "-----BEGIN EC PRIVATE KEY-----\n"));
    CHECK(blocked("enc.key", "-----BEGIN ENCRYPTED PRIVATE KEY-----\n"));
    CHECK(blocked("ssh.pem", "-----BEGIN OPENSSH PRIVATE KEY-----\n"));
    // A certificate bundled after its key still holds the key.
    CHECK(blocked("bundle.pem", std::string(k_certificate) + std::string(k_rsa_key)));
    CHECK_FALSE(blocked("tls/ca.pem", k_certificate));
    CHECK_FALSE(blocked("pub.pem", "-----BEGIN PUBLIC KEY-----\nMFkw...\n"));
    CHECK_FALSE(blocked("license.key", "XXXX-YYYY-ZZZZ"));
    // No content: an empty file or a symlink holds no key.
    CHECK_FALSE(blocked("empty.pem", ""));
  }

  TEST_CASE("key stores are blocked whatever their content") {
    CHECK(secret_rule_for("certs/client.p12", "") ==
          std::optional<std::string>("PKCS#12 key store (*.p12, *.pfx)"));
    CHECK(blocked("client.pfx", "binary"));
    CHECK(blocked("putty.ppk", "PuTTY-User-Key-File-3: ssh-ed25519"));
    CHECK_FALSE(blocked("client.p12.txt"));
  }

  TEST_CASE("credential files of command-line tools are blocked by path") {
    CHECK(secret_rule_for("home/.aws/credentials", "") ==
          std::optional<std::string>("AWS credentials (.aws/credentials)"));
    CHECK(blocked(".aws/credentials"));
    CHECK_FALSE(blocked(".aws/config"));
    CHECK_FALSE(blocked("docs/credentials"));
    CHECK_FALSE(blocked("my.aws/credentials"));
    CHECK(blocked(".netrc"));
    CHECK(blocked("x/_netrc"));
    CHECK_FALSE(blocked("netrc"));
    CHECK(blocked(".pypirc"));
    CHECK(blocked(".git-credentials"));
    CHECK(blocked(".docker/config.json"));
    CHECK_FALSE(blocked("docker/config.json"));
    CHECK(blocked("ops/.kube/config"));
    CHECK_FALSE(blocked("kube/config"));
    CHECK(blocked(".config/gcloud/credentials.db"));
  }

  TEST_CASE("Google Cloud service-account keys are blocked by content") {
    const std::string key =
        R"({"type": "service_account", "project_id": "p", "private_key_id": "1",
            "private_key": "-----BEGIN PRIVATE KEY-----\nMII...")";
    CHECK(blocked("deploy/sa.json", key));
    CHECK_FALSE(blocked("package.json", R"({"name": "x", "version": "1.0.0"})"));
    CHECK_FALSE(blocked("schema.json", R"({"type": "service_account"})"));
  }

  TEST_CASE("ordinary source files are not blocked") {
    for (const char* name : {"main.py", "src/app/settings.py", "README.md", "keys.py",
                             "config/key_rotation.md", "pem.txt"}) {
      CAPTURE(name);
      CHECK_FALSE(blocked(name, "print('hello')\n"));
    }
  }
}

TEST_SUITE("secret_rule_needs_head") {
  TEST_CASE("names decided by content need the head, others do not") {
    CHECK(secret_rule_needs_head("tls/server.pem"));
    CHECK(secret_rule_needs_head("server.key"));
    CHECK(secret_rule_needs_head("deploy/sa.json"));
    CHECK_FALSE(secret_rule_needs_head("client.p12"));  // blocked by name alone
    CHECK_FALSE(secret_rule_needs_head(".env"));
    CHECK_FALSE(secret_rule_needs_head("main.py"));
  }
}

TEST_SUITE("secret_allowed") {
  TEST_CASE("no patterns allow nothing") {
    CHECK_FALSE(secret_allowed("tests/id_rsa", {}));
  }

  TEST_CASE("patterns allow by name, by anchored path and by directory") {
    const std::vector<std::string> allow = {"tests/fixtures/", "/deploy/dev.env", "*.example.pem"};
    CHECK(secret_allowed("tests/fixtures/id_rsa", allow));
    CHECK(secret_allowed("tests/fixtures/deep/server.pem", allow));
    CHECK_FALSE(secret_allowed("fixtures/id_rsa", allow));
    CHECK(secret_allowed("deploy/dev.env", allow));
    CHECK_FALSE(secret_allowed("app/deploy/dev.env", allow));
    CHECK(secret_allowed("a/b/server.example.pem", allow));
    CHECK_FALSE(secret_allowed("a/b/server.pem", allow));
  }

  TEST_CASE("a negation takes a file back out of an allowed set") {
    const std::vector<std::string> allow = {"*.pem", "!prod.pem", "# comment"};
    CHECK(secret_allowed("certs/dev.pem", allow));
    CHECK_FALSE(secret_allowed("certs/prod.pem", allow));
  }

  TEST_CASE("a file below an allowed directory cannot be taken back out") {
    // gitignore(5): a file cannot be re-included (here: re-excluded) below a matched directory.
    const std::vector<std::string> allow = {"fixtures/", "!fixtures/real.pem"};
    CHECK(secret_allowed("fixtures/real.pem", allow));
  }
}

TEST_SUITE("ignore_pattern") {
  TEST_CASE("wildmatch: literals, '?', '*' and escapes") {
    const auto m = [](std::string_view g, std::string_view t) {
      return wildmatch(g, t, SlashMode::special);
    };
    CHECK(m("foo", "foo"));
    CHECK_FALSE(m("bar", "foo"));
    CHECK(m("???", "foo"));
    CHECK_FALSE(m("??", "foo"));
    CHECK(m("*", "foo"));
    CHECK(m("f*", "foo"));
    CHECK_FALSE(m("*f", "foo"));
    CHECK(m("*foo*", "foo"));
    CHECK(m("*ob*a*r*", "foobar"));
    CHECK(m("*ab", "aaaaaaabababab"));
    CHECK(m("foo\\*", "foo*"));
    CHECK_FALSE(m("foo\\*bar", "foobar"));
    CHECK(m("f\\\\oo", "f\\oo"));
    CHECK(m("\\#x", "#x"));
    CHECK(m("-*-*-*-*-*-*-12-*-*-*-m-*-*-*",
            "-adobe-courier-bold-o-normal--12-120-75-75-m-70-iso8859-1"));
    CHECK(m("*X*i", "abcXdefXghi"));
  }

  TEST_CASE("wildmatch: bracket expressions") {
    const auto m = [](std::string_view g, std::string_view t) {
      return wildmatch(g, t, SlashMode::special);
    };
    CHECK(m("*[al]?", "ball"));
    CHECK_FALSE(m("[ten]", "ten"));
    CHECK(m("**[!te]", "ten"));
    CHECK_FALSE(m("**[!ten]", "ten"));
    CHECK(m("t[a-g]n", "ten"));
    CHECK_FALSE(m("t[!a-g]n", "ten"));
    CHECK(m("t[!a-g]n", "ton"));
    CHECK(m("t[^a-g]n", "ton"));
    CHECK(m("a[]]b", "a]b"));
    CHECK(m("a[]-]b", "a-b"));
    CHECK(m("a[]-]b", "a]b"));
    CHECK_FALSE(m("a[]-]b", "aab"));
    CHECK(m("a[]a-]b", "aab"));
    CHECK(m("]", "]"));
    CHECK(m("[[:alpha:]][[:digit:]][[:upper:]]", "a1B"));
    CHECK_FALSE(m("[[:digit:][:upper:][:space:]]", "a"));
    CHECK(m("[[:digit:][:upper:][:space:]]", "A"));
    CHECK(m("[[:xdigit:]]", "f"));
    CHECK_FALSE(m("[[:xdigit:]]", "g"));
    CHECK_FALSE(m("[[:nosuchclass:]]", "a"));
    CHECK_FALSE(m("[abc", "a"));  // unterminated: never matches
    CHECK_FALSE(m("a[/]b", "a/b"));
  }

  TEST_CASE("wildmatch: '*' stays in one directory, '**' crosses them as a whole component") {
    const auto m = [](std::string_view g, std::string_view t) {
      return wildmatch(g, t, SlashMode::special);
    };
    CHECK_FALSE(m("foo*bar", "foo/baz/bar"));
    CHECK_FALSE(m("foo**bar", "foo/baz/bar"));
    CHECK(m("foo/*/bar", "foo/baz/bar"));
    CHECK(m("foo/**/bar", "foo/baz/bar"));
    CHECK(m("foo/**/bar", "foo/b/a/z/bar"));
    CHECK(m("foo/**/bar", "foo/bar"));
    CHECK(m("**/foo", "foo"));
    CHECK(m("**/foo", "bar/baz/foo"));
    CHECK_FALSE(m("*/foo", "bar/baz/foo"));
    CHECK_FALSE(m("**/bar*", "foo/bar/baz"));
    CHECK(m("**/bar/*", "deep/foo/bar/baz"));
    CHECK_FALSE(m("**/bar/*", "deep/foo/bar/baz/"));
    CHECK(m("**/bar/**", "deep/foo/bar/baz/"));
    CHECK_FALSE(m("**/bar/*", "deep/foo/bar"));
    CHECK(m("*/bar/**", "foo/bar/baz/x"));
    CHECK_FALSE(m("*/bar/**", "deep/foo/bar/baz/x"));
    CHECK(m("**/bar/*/*", "deep/foo/bar/baz/x"));
    CHECK(m("*/*/*", "foo/bba/arr"));
    CHECK_FALSE(m("*/*/*", "foo/bb/aa/rr"));
    CHECK(m("**/**/**", "foo/bb/aa/rr"));
    CHECK(m("*/*X*/*/*i", "ab/cXd/efXg/hi"));
    CHECK(m("**/*X*/**/*i", "ab/cXd/efXg/hi"));
    CHECK(m("XXX/*/*/*/*/*/*/12/*/*/*/m/*/*/*",
            "XXX/adobe/courier/bold/o/normal//12/120/75/75/m/70/iso8859/1"));
    CHECK(wildmatch("foo*bar", "foo/baz/bar", SlashMode::ordinary));
  }

  TEST_CASE("IgnoreRules: name patterns match at any depth, slashes anchor") {
    IgnoreRules rules;
    rules.push("", "*.log\nbuild/\n/top.txt\ndoc/frotz\n", ".envdignore");
    CHECK(rules.match("a/b/x.log", EntryKind::file) ==
          std::optional<std::string_view>(".envdignore"));
    CHECK(rules.match("build", EntryKind::directory).has_value());
    CHECK(rules.match("src/build", EntryKind::directory).has_value());
    CHECK_FALSE(rules.match("build", EntryKind::file).has_value());  // "build/" wants a directory
    CHECK(rules.match("top.txt", EntryKind::file).has_value());
    CHECK_FALSE(rules.match("a/top.txt", EntryKind::file).has_value());
    CHECK(rules.match("doc/frotz", EntryKind::file).has_value());
    CHECK_FALSE(rules.match("a/doc/frotz", EntryKind::file).has_value());
    CHECK_FALSE(rules.match("x.logs", EntryKind::file).has_value());
  }

  TEST_CASE("IgnoreRules: comments, blank lines, escapes and trailing spaces") {
    IgnoreRules rules;
    rules.push("", "# comment\n\n\\#hash\n\\!bang\nspaced   \nkept\\ \r\n", "config");
    CHECK_FALSE(rules.match("# comment", EntryKind::file).has_value());
    CHECK(rules.match("#hash", EntryKind::file).has_value());
    CHECK(rules.match("!bang", EntryKind::file).has_value());
    CHECK(rules.match("spaced", EntryKind::file).has_value());
    CHECK_FALSE(rules.match("spaced   ", EntryKind::file).has_value());
    CHECK(rules.match("kept ", EntryKind::file).has_value());
    CHECK_FALSE(rules.match("kept", EntryKind::file).has_value());
  }

  TEST_CASE("IgnoreRules: the last match decides, deeper files override, bases scope") {
    IgnoreRules rules;
    rules.push("", "*.txt\n!keep*.txt\nkeep-not.txt\n", "config");
    CHECK(rules.match("a.txt", EntryKind::file).has_value());
    CHECK_FALSE(rules.match("keep1.txt", EntryKind::file).has_value());
    CHECK(rules.match("keep-not.txt", EntryKind::file).has_value());
    rules.push("sub", "!a.txt\n/only-here\n", ".envdignore");
    CHECK_FALSE(rules.match("sub/a.txt", EntryKind::file).has_value());
    CHECK(rules.match("a.txt", EntryKind::file) == std::optional<std::string_view>("config"));
    CHECK(rules.match("sub/only-here", EntryKind::file) ==
          std::optional<std::string_view>(".envdignore"));
    CHECK_FALSE(rules.match("only-here", EntryKind::file).has_value());
    CHECK_FALSE(rules.match("sub/x/only-here", EntryKind::file).has_value());
    rules.pop();
    CHECK(rules.match("sub/a.txt", EntryKind::file).has_value());
  }

  TEST_CASE("IgnoreRules: match_with_parents stops at an ignored directory") {
    IgnoreRules rules;
    rules.push("", "data/\n!data/keep.csv\n", ".envdignore");
    CHECK(rules.match_with_parents("data/keep.csv", EntryKind::file).has_value());
    CHECK_FALSE(rules.match("data/keep.csv", EntryKind::file).has_value());
    CHECK(rules.match_with_parents("x/data/y/z.csv", EntryKind::file).has_value());
    CHECK_FALSE(rules.match_with_parents("database/z.csv", EntryKind::file).has_value());
  }
}

}  // namespace envd::agent
