// OCI manifest and config (de)serialisation through nlohmann-json, canonical on output.
#include "envd/oci/image.hpp"

#include "envd/util/json_detail.hpp"

namespace envd::oci {
namespace {

using nlohmann::json;

json descriptor_json(const Descriptor& d) {
  json j = {{"mediaType", d.media_type}, {"digest", d.digest.str()}, {"size", d.size}};
  if (!d.annotations.empty()) j["annotations"] = d.annotations;
  return j;
}

std::string dump(const json& j) {
  // Our own documents hold only UTF-8 we produced or validated; replace keeps this total.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Error bad(std::string_view where, std::string_view why) {
  return Error(ErrorCode::invalid_argument,
               "manifest: " + std::string(where) + ": " + std::string(why));
}

Result<Descriptor> parse_descriptor(const json& j, const std::string& where) {
  if (!j.is_object()) return bad(where, "descriptor must be an object");
  Descriptor d{std::string(), sha256_of(""), 0, {}};
  auto mt = j.find("mediaType");
  if (mt == j.end() || !mt->is_string()) return bad(where + "/mediaType", "missing");
  d.media_type = mt->get<std::string>();
  auto dg = j.find("digest");
  if (dg == j.end() || !dg->is_string()) return bad(where + "/digest", "missing");
  auto digest = Digest::parse(dg->get<std::string>());
  if (!digest) return bad(where + "/digest", digest.error().message());
  d.digest = *digest;
  auto sz = j.find("size");
  if (sz == j.end() || !sz->is_number_unsigned()) return bad(where + "/size", "must be a size");
  d.size = sz->get<std::uint64_t>();
  if (auto a = j.find("annotations"); a != j.end() && a->is_object()) {
    for (const auto& [k, v] : a->items())
      if (v.is_string()) d.annotations[k] = v.get<std::string>();
  }
  return d;
}

}  // namespace

std::string serialize(const ImageConfig& c) {
  json diff_ids = json::array();
  for (const auto& d : c.diff_ids) diff_ids.push_back(d.str());
  json config = json::object();
  if (!c.env.empty()) config["Env"] = c.env;
  if (!c.working_dir.empty()) config["WorkingDir"] = c.working_dir;
  if (!c.cmd.empty()) config["Cmd"] = c.cmd;
  if (!c.labels.empty()) config["Labels"] = c.labels;
  return dump({{"architecture", c.architecture},
               {"os", c.os},
               {"config", config},
               {"rootfs", {{"type", "layers"}, {"diff_ids", diff_ids}}}});
}

std::string serialize(const ImageManifest& m) {
  json layers = json::array();
  for (const auto& l : m.layers) layers.push_back(descriptor_json(l));
  json j = {{"schemaVersion", 2},
            {"mediaType", std::string(media_type::k_manifest)},
            {"config", descriptor_json(m.config)},
            {"layers", layers}};
  if (!m.annotations.empty()) j["annotations"] = m.annotations;
  return dump(j);
}

Result<ImageConfig> parse_config(std::string_view text) {
  ENVD_TRY(json j, envd::json::parse(text, "image config"));
  if (!j.is_object()) return bad("config", "must be an object");
  ImageConfig c;
  try {
    c.architecture = j.value("architecture", "");
    c.os = j.value("os", "");
    if (auto cfg = j.find("config"); cfg != j.end() && cfg->is_object()) {
      if (auto e = cfg->find("Env"); e != cfg->end() && e->is_array())
        c.env = e->get<std::vector<std::string>>();
      c.working_dir = cfg->value("WorkingDir", "");
      if (auto cmd = cfg->find("Cmd"); cmd != cfg->end() && cmd->is_array())
        c.cmd = cmd->get<std::vector<std::string>>();
      if (auto l = cfg->find("Labels"); l != cfg->end() && l->is_object())
        c.labels = l->get<std::map<std::string, std::string>>();
    }
    if (auto rootfs = j.find("rootfs"); rootfs != j.end() && rootfs->is_object()) {
      for (const auto& d : rootfs->value("diff_ids", json::array())) {
        auto digest = Digest::parse(d.get<std::string>());
        if (!digest) return bad("config/rootfs/diff_ids", digest.error().message());
        c.diff_ids.push_back(*digest);
      }
    }
  } catch (const json::exception& e) {
    return bad("config", e.what());
  }
  return c;
}

Result<ManifestInfo> parse_manifest(std::string_view bytes, std::string_view content_type) {
  ENVD_TRY(json j, envd::json::parse(bytes, "manifest"));
  if (!j.is_object()) return bad("", "must be a JSON object");
  auto sv = j.find("schemaVersion");
  if (sv == j.end() || !sv->is_number_integer() || sv->get<int>() != 2)
    return bad("schemaVersion", "must be 2");
  ManifestInfo info;
  if (auto mt = j.find("mediaType"); mt != j.end() && mt->is_string()) {
    info.media_type = mt->get<std::string>();
  } else {
    info.media_type = std::string(content_type);
  }
  const std::string& t = info.media_type;
  if (t == media_type::k_index || t == media_type::k_docker_manifest_list ||
      (t.empty() && j.contains("manifests"))) {
    info.is_index = true;
    if (info.media_type.empty()) info.media_type = std::string(media_type::k_index);
    auto ms = j.find("manifests");
    if (ms == j.end() || !ms->is_array()) return bad("manifests", "must be an array");
    for (std::size_t i = 0; i < ms->size(); ++i) {
      ENVD_TRY(auto d, parse_descriptor((*ms)[i], "manifests/" + std::to_string(i)));
      info.manifests.push_back(std::move(d));
    }
    return info;
  }
  if (t.empty()) info.media_type = std::string(media_type::k_manifest);
  if (info.media_type != media_type::k_manifest && info.media_type != media_type::k_docker_manifest)
    return bad("mediaType", "unsupported manifest type \"" + info.media_type + "\"");
  auto cfg = j.find("config");
  if (cfg == j.end()) return bad("config", "missing");
  ENVD_TRY(auto config, parse_descriptor(*cfg, "config"));
  info.config = std::move(config);
  auto layers = j.find("layers");
  if (layers == j.end() || !layers->is_array()) return bad("layers", "must be an array");
  for (std::size_t i = 0; i < layers->size(); ++i) {
    ENVD_TRY(auto d, parse_descriptor((*layers)[i], "layers/" + std::to_string(i)));
    info.layers.push_back(std::move(d));
  }
  return info;
}

}  // namespace envd::oci
