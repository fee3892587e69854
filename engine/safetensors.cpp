// safetensors reader/writer; see safetensors.h for the format and the guarantees.
#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "engine/errors.h"
#include "engine/input_file.h"
#include "engine/output_file.h"

namespace mambadiff::safetensors {

namespace {

using nlohmann::json;

constexpr uint64_t kInt64Max = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

// A name in single quotes, with control and non-ASCII bytes escaped so every message stays on one
// line whatever the file holds.
std::string quote(const std::string& s) {
  std::string out = "'";
  for (unsigned char c : s) {
    if (c == '\\' || c == '\'') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c >= 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "'";
}

// Removes newlines from text that comes from a library (nlohmann, strerror).
std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& what) {
  throw InputError(fmt::format("{}: {}", path.string(), one_line(what)));
}

[[noreturn]] void fail_tensor(const std::filesystem::path& path, const std::string& name,
                              const std::string& what) {
  throw InputError(fmt::format("{}: tensor {}: {}", path.string(), quote(name), one_line(what)));
}

// The largest header accepted: the safetensors reference implementation's limit (100 MB; its
// HeaderTooLarge). Real headers are a few MB at most, and a bound keeps a hostile length from
// allocating the whole file as JSON.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// The header is {name: {dtype, shape: [..], data_offsets: [..]}} (depth 3); deeper nesting is not
// a safetensors header, and bounding it keeps a hostile header from nesting without end.
constexpr int kMaxHeaderDepth = 8;

// The header is one JSON object; parse_input_json (engine/input_file.h) bounds its nesting and
// rejects duplicate keys (nlohmann would keep one of them silently: two entries for one tensor name
// would alias).
json parse_header(const std::filesystem::path& path, const std::vector<uint8_t>& header) {
  if (header.empty() || header[0] != '{') {
    fail(path, "header must begin with '{' (a JSON object; the safetensors format requires it)");
  }
  return parse_input_json(std::string(header.begin(), header.end()), path.string() + ": header", kMaxHeaderDepth);
}

// The safetensors rule for the data section: the tensors' byte ranges, in order, tile it exactly:
// the first begins at 0, each begins where the one before ends (no overlap, no aliasing, no gap)
// and the last ends at the end of the file (no trailing bytes). Entries are already in bounds.
void check_ranges_tile_data(const std::filesystem::path& path, const std::map<std::string, TensorEntry>& entries,
                            uint64_t data_size) {
  std::vector<const TensorEntry*> by_offset;
  for (const auto& [name, e] : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;  // bytes [0, covered) belong to the tensors seen so far
  const TensorEntry* previous = nullptr;
  for (const TensorEntry* e : by_offset) {
    if (e->begin < covered) {
      fail_tensor(path, e->name,
                  fmt::format("data_offsets [{}, {}] overlap tensor {}'s [{}, {}] (ranges must not overlap or alias)",
                              e->begin, e->end, quote(previous->name), previous->begin, previous->end));
    }
    if (e->begin > covered) {
      fail_tensor(path, e->name,
                  fmt::format("data_offsets [{}, {}] leave a gap of {} bytes after {} (ranges must be contiguous)",
                              e->begin, e->end, e->begin - covered,
                              previous ? "tensor " + quote(previous->name) : std::string("the start of the data")));
    }
    covered = e->end;
    previous = e;
  }
  if (covered != data_size) {
    fail(path, fmt::format("{} trailing bytes after the last tensor's data (the data section is {} bytes, "
                           "the tensors cover {})",
                           data_size - covered, data_size, covered));
  }
}

uint64_t read_le_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Closes a FILE* on scope exit.
struct FileCloser {
  std::FILE* f;
  ~FileCloser() {
    if (f != nullptr) std::fclose(f);
  }
};

void read_exact(std::FILE* f, uint8_t* dst, uint64_t n, const std::filesystem::path& path,
                const char* what) {
  uint64_t done = 0;
  while (done < n) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n - done, uint64_t{1} << 30));
    const size_t got = std::fread(dst + done, 1, chunk, f);
    if (got == 0) {
      if (std::ferror(f)) {
        fail(path, fmt::format("read error in {}: {}", what, std::strerror(errno)));
      }
      fail(path, fmt::format("truncated file: {} ended after {} of {} bytes", what, done, n));
    }
    done += got;
  }
}

// Parses one tensor entry of the header; `begin/end` are checked against `data_size`.
TensorEntry parse_entry(const std::filesystem::path& path, const std::string& name,
                        const json& info, uint64_t data_size) {
  if (!info.is_object()) {
    fail_tensor(path, name, fmt::format("entry must be a JSON object, got {}", info.type_name()));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!info.contains(key)) fail_tensor(path, name, fmt::format("missing \"{}\"", key));
  }

  TensorEntry e;
  e.name = name;

  const json& dtype = info.at("dtype");
  if (!dtype.is_string()) {
    fail_tensor(path, name, fmt::format("\"dtype\" must be a string, got {}", dtype.type_name()));
  }
  try {
    e.dtype = dtype_from_name(dtype.get<std::string>());
  } catch (const std::invalid_argument&) {
    fail_tensor(path, name,
                fmt::format("unknown dtype {} (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)",
                            quote(dtype.get<std::string>())));
  }

  const json& shape = info.at("shape");
  if (!shape.is_array()) {
    fail_tensor(path, name, fmt::format("\"shape\" must be an array, got {}", shape.type_name()));
  }
  bool has_zero = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    const json& d = shape[i];
    if (d.is_number_unsigned()) {
      const uint64_t v = d.get<uint64_t>();
      if (v > kInt64Max) fail_tensor(path, name, fmt::format("shape[{}] = {} is too large", i, v));
      e.shape.push_back(static_cast<int64_t>(v));
    } else if (d.is_number_integer()) {
      const int64_t v = d.get<int64_t>();
      if (v < 0) fail_tensor(path, name, fmt::format("shape[{}] = {} is negative", i, v));
      e.shape.push_back(v);
    } else {
      fail_tensor(path, name,
                  fmt::format("shape[{}] must be an integer, got {} {}", i, d.type_name(), d.dump()));
    }
    if (e.shape.back() == 0) has_zero = true;
  }

  const json& offs = info.at("data_offsets");
  if (!offs.is_array() || offs.size() != 2) {
    fail_tensor(path, name,
                fmt::format("\"data_offsets\" must be an array of two integers, got {}", offs.dump()));
  }
  uint64_t bounds[2] = {0, 0};
  for (size_t i = 0; i < 2; ++i) {
    const json& o = offs[i];
    if (o.is_number_unsigned()) {
      bounds[i] = o.get<uint64_t>();
    } else if (o.is_number_integer() && o.get<int64_t>() >= 0) {
      bounds[i] = static_cast<uint64_t>(o.get<int64_t>());
    } else {
      fail_tensor(path, name,
                  fmt::format("\"data_offsets\" must be two non-negative integers, got {}",
                              offs.dump()));
    }
  }
  e.begin = bounds[0];
  e.end = bounds[1];
  if (e.begin > e.end) {
    fail_tensor(path, name,
                fmt::format("data_offsets [{}, {}]: begin is after end", e.begin, e.end));
  }
  if (e.end > data_size) {
    fail_tensor(path, name,
                fmt::format("data_offsets [{}, {}] run past the data section ({} bytes): "
                            "truncated file",
                            e.begin, e.end, data_size));
  }

  // numel * itemsize in uint64 with overflow checks (a zero dimension makes the product 0 however
  // large the others are).
  const uint64_t itemsize = c10::elementSize(e.dtype);
  uint64_t bytes = 0;
  if (!has_zero) {
    bytes = itemsize;
    for (int64_t d : e.shape) {
      const uint64_t ud = static_cast<uint64_t>(d);
      if (bytes > std::numeric_limits<uint64_t>::max() / ud || bytes * ud > kInt64Max) {
        fail_tensor(path, name,
                    fmt::format("shape {} is too large: its byte size overflows", shape.dump()));
      }
      bytes *= ud;
    }
  }
  if (e.end - e.begin != bytes) {
    fail_tensor(path, name,
                fmt::format("data_offsets [{}, {}] hold {} bytes but dtype {} shape {} needs {}",
                            e.begin, e.end, e.end - e.begin, dtype.get<std::string>(),
                            shape.dump(), bytes));
  }
  return e;
}

}  // namespace

std::string dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat64: return "F64";
    case torch::kFloat32: return "F32";
    case torch::kFloat16: return "F16";
    case torch::kBFloat16: return "BF16";
    case torch::kInt64: return "I64";
    case torch::kInt32: return "I32";
    case torch::kInt16: return "I16";
    case torch::kInt8: return "I8";
    case torch::kUInt8: return "U8";
    case torch::kBool: return "BOOL";
    default: break;
  }
  throw std::invalid_argument(fmt::format("dtype {} is not supported by safetensors I/O",
                                          c10::toString(t)));
}

torch::ScalarType dtype_from_name(const std::string& name) {
  static const std::map<std::string, torch::ScalarType> kTable = {
      {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16},
      {"BF16", torch::kBFloat16}, {"I64", torch::kInt64}, {"I32", torch::kInt32},
      {"I16", torch::kInt16}, {"I8", torch::kInt8}, {"U8", torch::kUInt8},
      {"BOOL", torch::kBool}};
  auto it = kTable.find(name);
  if (it == kTable.end()) throw std::invalid_argument("unknown safetensors dtype '" + name + "'");
  return it->second;
}

File File::open(const std::filesystem::path& path) {
  File file;
  file.path_ = path;

  require_regular_file(path);  // before fopen: opening a FIFO would block
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) fail(path, fmt::format("cannot open: {}", std::strerror(errno)));
  FileCloser closer{f};

  struct stat st {};
  if (::fstat(::fileno(f), &st) != 0) fail(path, fmt::format("cannot stat: {}", std::strerror(errno)));
  if (S_ISDIR(st.st_mode)) fail(path, "cannot read: is a directory");
  if (!S_ISREG(st.st_mode)) fail(path, "cannot read: not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);

  if (size < 8) {
    fail(path, fmt::format("truncated file: {} bytes, need at least 8 for the header length", size));
  }
  uint8_t len_bytes[8];
  read_exact(f, len_bytes, 8, path, "the header length");
  const uint64_t header_len = read_le_u64(len_bytes);
  if (header_len > kMaxHeaderBytes) {
    fail(path, fmt::format("header length {} exceeds the format's limit of {} bytes", header_len, kMaxHeaderBytes));
  }
  if (header_len > size - 8) {
    fail(path, fmt::format("header length {} exceeds the {} bytes after the length field "
                           "(truncated file or not a safetensors file)",
                           header_len, size - 8));
  }

  std::vector<uint8_t> header(static_cast<size_t>(header_len));
  read_exact(f, header.data(), header_len, path, "the header");
  const uint64_t data_size = size - 8 - header_len;
  file.data_.resize(static_cast<size_t>(data_size));
  read_exact(f, file.data_.data(), data_size, path, "the data section");

  const json root = parse_header(path, header);
  if (!root.is_object()) {
    fail(path, fmt::format("header must be a JSON object, got {}", root.type_name()));
  }

  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& key = it.key();
    const json& value = it.value();
    if (key == "__metadata__") {
      if (!value.is_object()) {
        fail(path, fmt::format("\"__metadata__\" must be a JSON object, got {}", value.type_name()));
      }
      for (auto m = value.begin(); m != value.end(); ++m) {
        if (!m.value().is_string()) {
          fail(path, fmt::format("\"__metadata__\" value for key {} must be a string, got {}",
                                 quote(m.key()), m.value().type_name()));
        }
        file.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    TensorEntry e = parse_entry(path, key, value, data_size);
    if (e.dtype == torch::kBool) {
      for (uint64_t i = e.begin; i < e.end; ++i) {
        if (file.data_[i] > 1) {
          fail_tensor(path, key,
                      fmt::format("BOOL element {} is byte 0x{:02x}, not 0 or 1", i - e.begin,
                                  file.data_[i]));
        }
      }
    }
    file.entries_.emplace(key, std::move(e));
  }
  check_ranges_tile_data(path, file.entries_, data_size);
  return file;
}

std::vector<std::string> File::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

bool File::contains(const std::string& name) const { return entries_.count(name) != 0; }

const TensorEntry& File::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) fail_tensor(path_, name, "not found in file");
  return it->second;
}

torch::Tensor File::tensor(const std::string& name) const {
  const TensorEntry& e = entry(name);
  torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype).device(torch::kCPU));
  const uint64_t n = e.end - e.begin;
  if (n != 0) std::memcpy(t.data_ptr(), data_.data() + e.begin, static_cast<size_t>(n));
  return t;
}

void write(const std::filesystem::path& path,
           const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
           const std::map<std::string, std::string>& metadata) {
  // Validate and collect everything before touching the filesystem.
  std::set<std::string> seen;
  std::vector<torch::Tensor> cpu;
  cpu.reserve(tensors.size());
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") fail_tensor(path, name, "name is reserved for metadata");
    if (!seen.insert(name).second) fail_tensor(path, name, "duplicate tensor name");
    if (!t.defined()) fail_tensor(path, name, "tensor is undefined");
    std::string dtype;
    try {
      dtype = dtype_name(t.scalar_type());
    } catch (const std::invalid_argument& e) {
      fail_tensor(path, name, e.what());
    }
    torch::Tensor c = t.to(torch::kCPU).contiguous();
    const uint64_t bytes = static_cast<uint64_t>(c.numel()) * c.element_size();
    nlohmann::ordered_json info = nlohmann::ordered_json::object();
    info["dtype"] = dtype;
    info["shape"] = c.sizes().vec();
    info["data_offsets"] = {offset, offset + bytes};
    header[name] = std::move(info);
    offset += bytes;
    cpu.push_back(std::move(c));
  }

  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name or value that is not UTF-8
    fail(path, fmt::format("cannot encode the header: {}", e.what()));
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  uint8_t len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<uint8_t>(header_text.size() >> (8 * i));

  std::vector<std::string_view> pieces = {
      std::string_view(reinterpret_cast<const char*>(len_bytes), sizeof(len_bytes)), header_text};
  for (const torch::Tensor& c : cpu) {
    if (c.numel() != 0) pieces.emplace_back(static_cast<const char*>(c.data_ptr()), c.nbytes());
  }
  write_output_file(path, pieces);
}

}  // namespace mambadiff::safetensors
