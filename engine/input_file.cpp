#include "engine/input_file.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

namespace mambadiff {

namespace {

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// Where the parser is in the document, for messages: "ops[0].tokens[1]".
class KeyPath {
 public:
  void open(bool is_array) { frames_.push_back({is_array, "", 0, {}}); }
  void close() {
    if (!frames_.empty()) frames_.pop_back();
    next_element();
  }
  // Records key `k` of the innermost object; false when that object already had it.
  bool key(const std::string& k) {
    if (frames_.empty()) return true;
    frames_.back().key = k;
    return frames_.back().keys_seen.insert(k).second;
  }
  void next_element() {
    if (!frames_.empty() && frames_.back().is_array) ++frames_.back().index;
  }
  std::string str() const {
    std::string s;
    for (const auto& f : frames_) {
      if (f.is_array) {
        s += fmt::format("[{}]", f.index);
      } else if (!f.key.empty()) {
        s += (s.empty() ? "" : ".") + f.key;
      }
    }
    return truncate_for_message(s);
  }
  std::string where() const {
    const std::string s = str();
    return s.empty() ? "at the top level" : fmt::format("key '{}'", s);
  }

 private:
  struct Frame {
    bool is_array;
    std::string key;
    size_t index;
    std::set<std::string> keys_seen;  // objects only
  };
  std::vector<Frame> frames_;
};

}  // namespace

std::string truncate_for_message(const std::string& text) {
  if (text.size() <= kMaxQuotedChars) return text;
  return text.substr(0, kMaxQuotedChars) + "...";
}

std::string quote_json(const nlohmann::json& value) {
  // error_handler::replace: a string that is not UTF-8 must not throw while we report it.
  return truncate_for_message(value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void require_regular_file(const std::filesystem::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) {
    throw InputError(fmt::format("{}: cannot open: {}", file.string(), std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    throw InputError(fmt::format("{}: cannot read: {}, not a regular file", file.string(), file_kind(st.st_mode)));
  }
}

std::string read_input_file(const std::filesystem::path& file, uint64_t max_bytes) {
  require_regular_file(file);
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(file, ec);
  if (ec) throw InputError(fmt::format("{}: cannot read: {}", file.string(), ec.message()));
  if (size > max_bytes) {
    throw InputError(fmt::format("{}: {} bytes is over the limit of {} bytes for this input", file.string(), size,
                                 max_bytes));
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) throw InputError(fmt::format("{}: cannot open", file.string()));
  std::string text(static_cast<size_t>(size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (static_cast<uint64_t>(in.gcount()) != size) throw InputError(fmt::format("{}: cannot read", file.string()));
  return text;
}

nlohmann::json parse_input_json(const std::string& text, const std::string& source, int max_depth) {
  using Event = nlohmann::json::parse_event_t;
  KeyPath path;
  // The callback sees every event in document order; `depth` counts the enclosing containers.
  auto track = [&](int depth, Event event, nlohmann::json& parsed) {
    switch (event) {
      case Event::object_start:
      case Event::array_start:
        if (depth + 1 > max_depth) {
          throw InputError(fmt::format("{}: {}: nested deeper than {} levels", source, path.where(), max_depth));
        }
        path.open(event == Event::array_start);
        break;
      case Event::key:
        // nlohmann keeps one of two equal keys silently; a file that says two things for one key
        // (two entries for one tensor name would alias) is rejected instead.
        if (const std::string k = parsed.is_string() ? parsed.get<std::string>() : std::string(); !path.key(k)) {
          throw InputError(fmt::format("{}: duplicate key '{}' (each key may appear once in an object)", source,
                                       truncate_for_message(k)));
        }
        break;
      case Event::value: path.next_element(); break;
      case Event::object_end:
      case Event::array_end: path.close(); break;
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text, track);
  } catch (const nlohmann::json::out_of_range& e) {
    if (e.id == 406) {  // "number overflow parsing '1e400'"
      throw InputError(fmt::format("{}: {}: a number outside the range of a double", source, path.where()));
    }
    throw InputError(fmt::format("{}: {}: {}", source, path.where(), truncate_for_message(e.what())));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("{}: not valid JSON ({}): {}", source, path.where(), truncate_for_message(e.what())));
  }
}

nlohmann::json read_input_json(const std::filesystem::path& file) {
  return parse_input_json(read_input_file(file), file.string());
}

void require_finite_tensor(const torch::Tensor& tensor, const std::string& file, const std::string& name) {
  if (!tensor.defined() || !tensor.is_floating_point()) return;
  const torch::Tensor finite = torch::isfinite(tensor);
  if (finite.all().item<bool>()) return;
  const int64_t nan = torch::isnan(tensor).sum().item<int64_t>();
  const int64_t inf = tensor.numel() - finite.sum().item<int64_t>() - nan;
  throw InputError(fmt::format("{}: tensor '{}': holds {} NaN and {} infinite value(s); weights and deltas must be finite",
                               file, name, nan, inf));
}

}  // namespace mambadiff
