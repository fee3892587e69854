// A small reader/writer for the safetensors format (https://huggingface.co/docs/safetensors):
//   [8 bytes: little-endian u64 header length N][N bytes: JSON header][raw tensor bytes]
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets in
// bytes, relative to the start of the data section) and may hold "__metadata__": {str: str}.
//
// Every offset is bounds-checked against the file size before any byte is read; every failure is
// an InputError naming the file and, where there is one, the tensor.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace mambadiff::safetensors {

// Supported dtype strings: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL.
std::string dtype_name(torch::ScalarType t);            // throws std::invalid_argument if unsupported
torch::ScalarType dtype_from_name(const std::string&);  // throws std::invalid_argument if unknown

struct TensorEntry {
  std::string name;
  torch::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offset in the data section
  uint64_t end = 0;    // one past the last byte
};

class File {
 public:
  // Reads and validates the whole file by the format's rules: a header of at most 100 MB that is a
  // JSON object (begins with '{') with no duplicate key in any object; known dtypes; every byte
  // range in bounds, begin <= end, exactly numel * itemsize long; and the ranges, sorted, tile the
  // data section exactly (no overlap or aliasing, no gap, no trailing bytes). Header entries may
  // come in any order.
  static File open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  const TensorEntry& entry(const std::string& name) const;  // InputError naming file + tensor
  // A CPU tensor that owns a copy of the bytes, in the stored dtype and shape.
  torch::Tensor tensor(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::filesystem::path path_;
  std::map<std::string, TensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
  std::vector<uint8_t> data_;  // the data section only
};

// Writes tensors (any device; made contiguous and copied to CPU) in the order given, with the
// metadata map as "__metadata__". Through write_output_file (engine/output_file.h): atomic for a
// regular file, straight through to a device or FIFO.
void write(const std::filesystem::path& path,
           const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
           const std::map<std::string, std::string>& metadata = {});

}  // namespace mambadiff::safetensors
