// Tests for engine/safetensors: round trips for every dtype, files assembled byte by byte, every
// malformed-file case, atomic writes, and interchange with Python's `safetensors` package.
#include "engine/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/errors.h"
#include "tests/test_support.h"

#ifndef MAMBADIFF_PYTHON
#define MAMBADIFF_PYTHON "python3"
#endif

namespace {

namespace fs = std::filesystem;
namespace st = mambadiff::safetensors;
using mambadiff::test_support::input_error;
using ::testing::HasSubstr;
using ::testing::Not;
using Named = std::vector<std::pair<std::string, torch::Tensor>>;

fs::path test_root() {
#ifdef MAMBADIFF_TEST_TMP
  return fs::path(MAMBADIFF_TEST_TMP);
#else
  return fs::temp_directory_path() / "mambadiff_test";
#endif
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file: length prefix, header text exactly as given, data bytes.
std::string assemble(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << p;
}

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The header text of a file (without the length prefix).
std::string header_of(const fs::path& p) {
  const std::string bytes = read_bytes(p);
  if (bytes.size() < 8) return "";
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  return bytes.substr(8, n);
}

std::string open_error(const fs::path& p) {
  return input_error([&] { st::File::open(p); });
}

// Bytes of a tensor in logical (contiguous) order.
std::string tensor_bytes(const torch::Tensor& t) {
  torch::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

// Same dtype, same shape, same bytes (so NaN payloads and -0.0 count).
void expect_bitwise_equal(const torch::Tensor& got, const torch::Tensor& want) {
  EXPECT_EQ(got.scalar_type(), want.scalar_type());
  EXPECT_EQ(got.sizes().vec(), want.sizes().vec());
  EXPECT_TRUE(got.device().is_cpu());
  EXPECT_TRUE(tensor_bytes(got) == tensor_bytes(want)) << "bytes differ";
}

// A tensor of the given dtype and shape whose bytes are random (every bit pattern, NaNs included;
// bool bytes are 0 or 1).
torch::Tensor random_bits(torch::ScalarType dtype, std::vector<int64_t> shape, uint32_t seed) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const int64_t nbytes = numel * static_cast<int64_t>(c10::elementSize(dtype));
  torch::Tensor raw = torch::empty({nbytes}, torch::kUInt8);
  std::mt19937 rng(seed);
  uint8_t* p = raw.data_ptr<uint8_t>();
  for (int64_t i = 0; i < nbytes; ++i) {
    p[i] = static_cast<uint8_t>(rng() & (dtype == torch::kBool ? 1u : 0xffu));
  }
  return raw.view(dtype).reshape(shape);
}

const std::vector<std::pair<torch::ScalarType, std::string>> kDtypes = {
    {torch::kFloat64, "F64"}, {torch::kFloat32, "F32"}, {torch::kFloat16, "F16"},
    {torch::kBFloat16, "BF16"}, {torch::kInt64, "I64"},  {torch::kInt32, "I32"},
    {torch::kInt16, "I16"},   {torch::kInt8, "I8"},      {torch::kUInt8, "U8"},
    {torch::kBool, "BOOL"}};

struct Malformed {
  std::string label;
  std::string header;
  std::string data;
  std::vector<std::string> expect;  // substrings of the message besides the file name
};

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = test_root() / fmt::format("safetensors_{}_{}", info->name(), ::getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path file(const std::string& name) const { return dir_ / name; }
  std::vector<std::string> dir_entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  // Every message is one line that names the file.
  void expect_names_file(const std::string& msg, const fs::path& p) {
    EXPECT_THAT(msg, HasSubstr(p.string()));
    EXPECT_THAT(msg, Not(HasSubstr("\n")));
  }
  // Each case, written as a file, is rejected with a message naming the file and its substrings.
  void expect_each_rejected(const std::vector<Malformed>& cases) {
    for (const Malformed& c : cases) {
      SCOPED_TRACE(c.label);
      const fs::path p = file(c.label + ".safetensors");
      write_bytes(p, assemble(c.header, c.data));
      const std::string msg = open_error(p);
      expect_names_file(msg, p);
      for (const std::string& sub : c.expect) EXPECT_THAT(msg, HasSubstr(sub));
    }
  }
  fs::path dir_;
};

// ---------------------------------------------------------------------------------------------
// dtype names

TEST(SafetensorsDtype, NamesMapBothWays) {
  for (const auto& [t, name] : kDtypes) {
    EXPECT_EQ(st::dtype_name(t), name);
    EXPECT_EQ(st::dtype_from_name(name), t);
  }
  EXPECT_THROW(st::dtype_name(torch::kComplexFloat), std::invalid_argument);
  EXPECT_THROW(st::dtype_from_name("F8_E4M3"), std::invalid_argument);
  EXPECT_THROW(st::dtype_from_name("f32"), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// round trips

TEST_F(SafetensorsTest, RoundTripEveryDtypeBitwise) {
  Named tensors;
  uint32_t seed = 1;
  for (const auto& [t, name] : kDtypes) {
    tensors.emplace_back(name + ".matrix", random_bits(t, {3, 5, 2}, seed++));
    tensors.emplace_back(name + ".vector", random_bits(t, {7}, seed++));
  }
  const fs::path p = file("all.safetensors");
  st::write(p, tensors);
  const st::File f = st::File::open(p);
  EXPECT_EQ(f.path(), p);
  EXPECT_EQ(f.names().size(), tensors.size());
  for (const auto& [name, want] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(f.contains(name));
    const st::TensorEntry& e = f.entry(name);
    EXPECT_EQ(e.name, name);
    EXPECT_EQ(e.dtype, want.scalar_type());
    EXPECT_EQ(e.shape, want.sizes().vec());
    EXPECT_EQ(e.end - e.begin, static_cast<uint64_t>(want.numel() * want.element_size()));
    const torch::Tensor got = f.tensor(name);
    expect_bitwise_equal(got, want);
    if (!want.is_floating_point()) {
      EXPECT_TRUE(torch::equal(got, want));
    }
  }
}

TEST_F(SafetensorsTest, NanPayloadsAndSignedZerosSurviveBitwise) {
  const std::vector<uint32_t> f32_bits = {0x7fc00000u, 0x7fc00001u, 0xffc12345u, 0x7f800001u,
                                          0x7fbfffffu, 0x80000000u, 0x7f800000u, 0xff800000u};
  const std::vector<uint64_t> f64_bits = {0x7ff8000000000001ull, 0xfff0000000abcdefull,
                                          0x7ff0000000000001ull, 0x8000000000000000ull};
  const std::vector<uint16_t> f16_bits = {0x7e01u, 0xfe42u, 0x7c01u, 0x8000u, 0x7c00u};
  const std::vector<uint16_t> bf16_bits = {0x7fc1u, 0xffc2u, 0x7f81u, 0x8000u, 0x7f80u};
  auto from = [](const auto& bits, torch::ScalarType raw, torch::ScalarType as) {
    const auto n = static_cast<int64_t>(bits.size());
    return torch::from_blob(const_cast<void*>(static_cast<const void*>(bits.data())), {n}, raw)
        .clone()
        .view(as);
  };
  const Named tensors = {{"f32", from(f32_bits, torch::kInt32, torch::kFloat32)},
                         {"f64", from(f64_bits, torch::kInt64, torch::kFloat64)},
                         {"f16", from(f16_bits, torch::kInt16, torch::kFloat16)},
                         {"bf16", from(bf16_bits, torch::kInt16, torch::kBFloat16)}};
  const fs::path p = file("nan.safetensors");
  st::write(p, tensors);
  const st::File f = st::File::open(p);
  for (const auto& [name, want] : tensors) {
    SCOPED_TRACE(name);
    const torch::Tensor got = f.tensor(name);
    EXPECT_TRUE(torch::isnan(got).any().item<bool>());
    expect_bitwise_equal(got, want);
  }
}

TEST_F(SafetensorsTest, ZeroDimAndZeroSizeTensors) {
  const Named tensors = {
      {"scalar_f32", torch::tensor(2.5f)},
      {"scalar_i64", torch::tensor(int64_t{-7})},
      {"scalar_bool", torch::tensor(true)},
      {"empty_1d", torch::empty({0}, torch::kFloat32)},
      {"empty_mid", torch::empty({3, 0, 2}, torch::kBFloat16)},
      {"empty_last", torch::empty({4, 0}, torch::kInt8)},
  };
  const fs::path p = file("shapes.safetensors");
  st::write(p, tensors);
  const st::File f = st::File::open(p);
  for (const auto& [name, want] : tensors) {
    SCOPED_TRACE(name);
    const torch::Tensor got = f.tensor(name);
    EXPECT_EQ(got.dim(), want.dim());
    expect_bitwise_equal(got, want);
  }
  EXPECT_TRUE(f.entry("scalar_f32").shape.empty());
  EXPECT_EQ(f.tensor("scalar_f32").item<float>(), 2.5f);
  EXPECT_EQ(f.entry("empty_mid").begin, f.entry("empty_mid").end);

  // The header holds [] for a 0-d shape.
  const auto header = nlohmann::json::parse(header_of(p));
  EXPECT_EQ(header["scalar_f32"]["shape"], nlohmann::json::array());
  EXPECT_EQ(header["empty_mid"]["shape"], nlohmann::json({3, 0, 2}));
}

TEST_F(SafetensorsTest, NonContiguousAndSlicedInputsAreWrittenInLogicalOrder) {
  const torch::Tensor base = torch::arange(24, torch::kFloat32).reshape({4, 6});
  const Named tensors = {{"transposed", base.t()},
                         {"sliced", base.slice(1, 2, 5)},
                         {"strided", base.slice(0, 0, 4, 2)},
                         {"expanded", torch::tensor({1, 2, 3}, torch::kInt32).expand({2, 3})}};
  const fs::path p = file("views.safetensors");
  st::write(p, tensors);
  const st::File f = st::File::open(p);
  for (const auto& [name, want] : tensors) {
    SCOPED_TRACE(name);
    const torch::Tensor got = f.tensor(name);
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_TRUE(torch::equal(got, want));
  }
}

TEST_F(SafetensorsTest, ReturnedTensorOwnsItsBytes) {
  const fs::path p = file("own.safetensors");
  st::write(p, {{"x", torch::arange(4, torch::kInt64)}});
  torch::Tensor a;
  {
    const st::File f = st::File::open(p);
    a = f.tensor("x");
    torch::Tensor b = f.tensor("x");
    b.fill_(9);  // a copy: neither the file object nor `a` changes
    EXPECT_TRUE(torch::equal(f.tensor("x"), torch::arange(4, torch::kInt64)));
  }
  EXPECT_TRUE(torch::equal(a, torch::arange(4, torch::kInt64)));  // outlives the File
}

TEST_F(SafetensorsTest, MetadataRoundTrip) {
  const std::map<std::string, std::string> meta = {
      {"format", "pt"},
      {"empty", ""},
      {"quoted \"key\"", "line1\nline2\ttab \\ backslash"},
      {"unicode", "\xc3\xa9t\xc3\xa9 \xe2\x9c\x93"},
  };
  const fs::path p = file("meta.safetensors");
  st::write(p, {{"w", torch::ones({2}, torch::kFloat32)}}, meta);
  const st::File f = st::File::open(p);
  EXPECT_EQ(f.metadata(), meta);
  EXPECT_EQ(f.names(), std::vector<std::string>{"w"});
  EXPECT_FALSE(f.contains("__metadata__"));

  const auto header = nlohmann::json::parse(header_of(p));
  ASSERT_TRUE(header.contains("__metadata__"));
  EXPECT_EQ(header["__metadata__"]["format"], "pt");
}

TEST_F(SafetensorsTest, EmptyMetadataIsNotWritten) {
  const fs::path p = file("nometa.safetensors");
  st::write(p, {{"w", torch::ones({2}, torch::kFloat32)}});
  EXPECT_FALSE(nlohmann::json::parse(header_of(p)).contains("__metadata__"));
  EXPECT_TRUE(st::File::open(p).metadata().empty());
}

TEST_F(SafetensorsTest, EmptyFileOfNoTensorsRoundTrips) {
  const fs::path p = file("none.safetensors");
  st::write(p, {});
  const st::File f = st::File::open(p);
  EXPECT_TRUE(f.names().empty());
  EXPECT_EQ(header_of(p).find_last_not_of(' '), 1u);  // "{}" plus padding
}

TEST_F(SafetensorsTest, NamesAreSortedAndOffsetsFollowTheGivenOrder) {
  const Named tensors = {{"zeta", torch::zeros({3}, torch::kFloat32)},
                         {"alpha", torch::zeros({2}, torch::kFloat64)},
                         {"mid", torch::zeros({1}, torch::kInt8)}};
  const fs::path p = file("order.safetensors");
  st::write(p, tensors);
  const st::File f = st::File::open(p);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"alpha", "mid", "zeta"}));
  EXPECT_TRUE(f.contains("mid"));
  EXPECT_FALSE(f.contains("missing"));

  // data_offsets are laid out in the order given, contiguously from 0.
  EXPECT_EQ(f.entry("zeta").begin, 0u);
  EXPECT_EQ(f.entry("zeta").end, 12u);
  EXPECT_EQ(f.entry("alpha").begin, 12u);
  EXPECT_EQ(f.entry("alpha").end, 28u);
  EXPECT_EQ(f.entry("mid").begin, 28u);
  EXPECT_EQ(f.entry("mid").end, 29u);

  // And the header lists tensors in the given order.
  const std::string h = header_of(p);
  EXPECT_LT(h.find("\"zeta\""), h.find("\"alpha\""));
  EXPECT_LT(h.find("\"alpha\""), h.find("\"mid\""));
  EXPECT_EQ(read_bytes(p).size(), 8 + h.size() + 29);
}

TEST_F(SafetensorsTest, WriterPadsHeaderWithSpacesToMultipleOf8) {
  bool saw_two = false;
  for (int len = 1; len <= 8; ++len) {
    const fs::path p = file(fmt::format("pad{}.safetensors", len));
    st::write(p, {{std::string(len, 'n'), torch::ones({1}, torch::kUInt8)}});
    const std::string h = header_of(p);
    SCOPED_TRACE(h);
    EXPECT_EQ(h.size() % 8, 0u);
    const size_t json_end = h.find_last_not_of(' ') + 1;
    EXPECT_EQ(h[json_end - 1], '}');
    const size_t pad = h.size() - json_end;
    EXPECT_LT(pad, 8u);
    EXPECT_EQ(pad, (8 - json_end % 8) % 8);
    if (pad == 2) saw_two = true;
    EXPECT_TRUE(torch::equal(st::File::open(p).tensor(std::string(len, 'n')),
                             torch::ones({1}, torch::kUInt8)));
  }
  EXPECT_TRUE(saw_two) << "no header length needed exactly 2 bytes of padding";
}

// ---------------------------------------------------------------------------------------------
// files assembled by hand

TEST_F(SafetensorsTest, ReadsHandAssembledFile) {
  // Tensor order in the header differs from the data order; metadata comes last.
  const std::string header =
      R"({"b":{"dtype":"I16","shape":[3],"data_offsets":[8,14]},)"
      R"("a":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]},)"
      R"("s":{"dtype":"BF16","shape":[],"data_offsets":[14,16]},)"
      R"("e":{"dtype":"F64","shape":[0,5],"data_offsets":[16,16]},)"
      R"("__metadata__":{"format":"pt","note":"hand"}})";
  std::string data;
  data += std::string("\x00\x00\x80\x3f", 4);  // 1.0f
  data += std::string("\x00\x00\x20\xc0", 4);  // -2.5f
  data += std::string("\x01\x00", 2);          // 1
  data += std::string("\xff\xff", 2);          // -1
  data += std::string("\x00\x80", 2);          // -32768
  data += std::string("\xc0\x3f", 2);          // bf16 1.5
  const fs::path p = file("hand.safetensors");
  write_bytes(p, assemble(header, data));

  const st::File f = st::File::open(p);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "b", "e", "s"}));
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "hand"}}));

  const torch::Tensor a = f.tensor("a");
  EXPECT_EQ(a.scalar_type(), torch::kFloat32);
  EXPECT_EQ(a.sizes().vec(), (std::vector<int64_t>{2, 1}));
  EXPECT_TRUE(torch::equal(a, torch::tensor({1.0f, -2.5f}).reshape({2, 1})));

  const torch::Tensor b = f.tensor("b");
  EXPECT_EQ(b.scalar_type(), torch::kInt16);
  EXPECT_TRUE(torch::equal(b, torch::tensor({1, -1, -32768}, torch::kInt16)));

  const torch::Tensor s = f.tensor("s");
  EXPECT_EQ(s.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.item<float>(), 1.5f);

  const torch::Tensor e = f.tensor("e");
  EXPECT_EQ(e.scalar_type(), torch::kFloat64);
  EXPECT_EQ(e.sizes().vec(), (std::vector<int64_t>{0, 5}));
}

TEST_F(SafetensorsTest, ReadsHeaderWithTwoBytesOfSpacePadding) {
  // Pick a name length that makes the JSON 6 bytes past a multiple of 8, so the reference writer
  // would pad it with exactly 2 spaces.
  std::string name = "x";
  auto json_for = [](const std::string& n) {
    return "{\"" + n + R"(":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  };
  while (json_for(name).size() % 8 != 6) name += "x";
  const std::string header = json_for(name) + "  ";
  ASSERT_EQ(header.size() % 8, 0u);
  const fs::path p = file("pad2.safetensors");
  write_bytes(p, assemble(header, std::string("\x07\xfe", 2)));
  const st::File f = st::File::open(p);
  EXPECT_TRUE(torch::equal(f.tensor(name), torch::tensor({7, 254}, torch::kUInt8)));

  // Two trailing spaces where the total is not a multiple of 8 are accepted too.
  const std::string odd = R"({"z":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}  )";
  ASSERT_NE(odd.size() % 8, 0u);
  const fs::path o = file("pad_odd.safetensors");
  write_bytes(o, assemble(odd, std::string("\x05", 1)));
  EXPECT_EQ(st::File::open(o).tensor("z").item<uint8_t>(), 5);

  // And a header padded to a multiple of 8 like the reference writer does.
  std::string padded = R"({"y":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}})";
  padded.append((8 - padded.size() % 8) % 8, ' ');
  const fs::path q = file("pad8.safetensors");
  write_bytes(q, assemble(padded, std::string("\x80", 1)));
  EXPECT_EQ(st::File::open(q).tensor("y").item<int8_t>(), -128);
}

TEST_F(SafetensorsTest, UnsortedButContiguousOffsetsAreAllowed) {
  const std::string header =
      R"({"hi":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},)"
      R"("empty":{"dtype":"F32","shape":[0],"data_offsets":[2,2]},)"
      R"("lo":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  const fs::path p = file("unsorted.safetensors");
  write_bytes(p, assemble(header, std::string("\x01\x02\x03\x04", 4)));
  const st::File f = st::File::open(p);
  EXPECT_TRUE(torch::equal(f.tensor("lo"), torch::tensor({1, 2}, torch::kUInt8)));
  EXPECT_TRUE(torch::equal(f.tensor("hi"), torch::tensor({3, 4}, torch::kUInt8)));
  EXPECT_EQ(f.tensor("empty").numel(), 0);
}

// The format's own rules for the data section and the header, one case per rule; each message
// names the file and the tensor (or key) at fault.
TEST_F(SafetensorsTest, FormatRulesOnOffsetsAndHeaderAreEnforced) {
  const std::string four("\x01\x02\x03\x04", 4);
  const std::vector<Malformed> cases = {
      // Two names for the same bytes: the aliasing the format forbids.
      {"aliased", R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                  R"("b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})",
       four, {"'b'", "overlap", "'a'"}},
      {"overlapping", R"({"lo":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
                      R"("hi":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
       four, {"'hi'", "overlap", "'lo'"}},
      {"gap_at_start", R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})", four,
       {"'w'", "gap of 2 bytes", "start of the data"}},
      {"gap_between", R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                      R"("b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
       four, {"'b'", "gap of 1 bytes", "'a'"}},
      {"trailing_bytes", R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})", four,
       {"1 trailing bytes"}},
      {"data_without_tensors", R"({})", four, {"4 trailing bytes"}},
      {"duplicate_tensor", R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                           R"("w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})",
       four, {"duplicate key 'w'"}},
      {"duplicate_field", R"({"w":{"dtype":"U8","dtype":"I8","shape":[4],"data_offsets":[0,4]}})", four,
       {"duplicate key 'dtype'"}},
      {"duplicate_metadata_key", R"({"__metadata__":{"k":"1","k":"2"}})", "", {"duplicate key 'k'"}},
      {"header_not_object_start", R"( {"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", four,
       {"begin with '{'"}},
      {"deep_nesting", R"({"__metadata__":{"k":[[[[[[[[[[[[1]]]]]]]]]]]]}})", "", {"nested deeper than 8"}},
  };
  expect_each_rejected(cases);
}

TEST_F(SafetensorsTest, HeaderLengthAboveTheFormatLimitIsRejectedBeforeReading) {
  // 100 MB + 1: the reference implementation's HeaderTooLarge, whatever the file's size.
  const fs::path p = file("bighdr.safetensors");
  write_bytes(p, le64(100'000'001) + std::string(64, ' '));
  const std::string msg = open_error(p);
  expect_names_file(msg, p);
  EXPECT_THAT(msg, HasSubstr("limit of 100000000 bytes"));
}

TEST_F(SafetensorsTest, UnknownTensorNameIsInputErrorNamingFileAndTensor) {
  const fs::path p = file("known.safetensors");
  st::write(p, {{"present", torch::ones({1})}});
  const st::File f = st::File::open(p);
  for (const std::string& msg : {input_error([&] { f.entry("absent.weight"); }),
                                 input_error([&] { f.tensor("absent.weight"); })}) {
    expect_names_file(msg, p);
    EXPECT_THAT(msg, HasSubstr("'absent.weight'"));
  }
}

// ---------------------------------------------------------------------------------------------
// malformed files

TEST_F(SafetensorsTest, MissingOrUnreadableFile) {
  const fs::path missing = file("does_not_exist.safetensors");
  std::string msg = open_error(missing);
  expect_names_file(msg, missing);
  EXPECT_THAT(msg, HasSubstr("cannot open"));

  const fs::path d = file("a_directory.safetensors");
  fs::create_directories(d);
  msg = open_error(d);
  expect_names_file(msg, d);
  EXPECT_THAT(msg, HasSubstr("directory"));
}

TEST_F(SafetensorsTest, FileShorterThanLengthField) {
  for (size_t n : {0, 1, 5, 7}) {
    const fs::path p = file(fmt::format("short{}.safetensors", n));
    write_bytes(p, std::string(n, '\0'));
    const std::string msg = open_error(p);
    expect_names_file(msg, p);
    EXPECT_THAT(msg, HasSubstr("truncated"));
    EXPECT_THAT(msg, HasSubstr(fmt::format("{} bytes", n)));
  }
}

TEST_F(SafetensorsTest, HeaderLengthBeyondFileSize) {
  const std::string header = R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  const std::vector<uint64_t> lengths = {header.size() + 2, 1000, uint64_t{1} << 63,
                                         ~uint64_t{0}, ~uint64_t{0} - 7};
  for (uint64_t len : lengths) {
    SCOPED_TRACE(len);
    const fs::path p = file("longhdr.safetensors");
    write_bytes(p, le64(len) + header + "\x01");
    const std::string msg = open_error(p);
    expect_names_file(msg, p);
    EXPECT_THAT(msg, HasSubstr(fmt::format("header length {}", len)));
  }
}

TEST_F(SafetensorsTest, MalformedHeadersAreInputErrorsNamingFileAndTensor) {
  const std::string f32x1 = R"("dtype":"F32","shape":[1],"data_offsets":[0,4])";
  const std::string four(4, '\0');
  const std::vector<Malformed> cases = {
      {"not_json", R"({"w": {"dtype": )", four, {"not valid JSON"}},
      {"empty_header", "", "", {"begin with '{'"}},
      {"trailing_garbage", R"({} x)", "", {"not valid JSON"}},
      {"invalid_utf8", "{\"\xff\xfe\":1}", "", {"not valid JSON"}},
      {"array_header", "[1,2]", "", {"JSON object", "begin with '{'"}},
      {"string_header", R"("hello")", "", {"JSON object", "begin with '{'"}},
      {"entry_not_object", R"({"w":5})", "", {"'w'", "object"}},
      {"missing_dtype", R"({"w":{"shape":[1],"data_offsets":[0,4]}})", four, {"'w'", "dtype"}},
      {"missing_shape", R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", four, {"'w'", "shape"}},
      {"missing_offsets", R"({"w":{"dtype":"F32","shape":[1]}})", four, {"'w'", "data_offsets"}},
      {"dtype_not_string", R"({"w":{"dtype":32,"shape":[1],"data_offsets":[0,4]}})", four,
       {"'w'", "dtype", "string"}},
      {"unknown_dtype", R"({"w":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", "\x01",
       {"'w'", "unknown dtype", "F8_E4M3"}},
      {"lowercase_dtype", R"({"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", four,
       {"'w'", "unknown dtype"}},
      {"shape_not_array", R"({"w":{"dtype":"F32","shape":"1","data_offsets":[0,4]}})", four,
       {"'w'", "shape", "array"}},
      {"shape_float", R"({"w":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})", four,
       {"'w'", "shape[0]", "integer"}},
      {"shape_null", R"({"w":{"dtype":"F32","shape":[1,null],"data_offsets":[0,4]}})", four,
       {"'w'", "shape[1]", "integer"}},
      {"shape_negative", R"({"w":{"dtype":"F32","shape":[2,-2],"data_offsets":[0,4]}})", four,
       {"'w'", "shape[1]", "negative"}},
      {"shape_above_int64", R"({"w":{"dtype":"U8","shape":[18446744073709551615],)"
                            R"("data_offsets":[0,4]}})",
       four, {"'w'", "shape[0]", "too large"}},
      {"numel_overflow", R"({"w":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],)"
                         R"("data_offsets":[0,0]}})",
       "", {"'w'", "overflow"}},
      {"bytes_overflow_u64", R"({"w":{"dtype":"F32","shape":[4611686018427387904],)"
                             R"("data_offsets":[0,0]}})",
       "", {"'w'", "overflow"}},
      {"bytes_above_int64", R"({"w":{"dtype":"F32","shape":[2305843009213693952],)"
                            R"("data_offsets":[0,0]}})",
       "", {"'w'", "overflow"}},
      {"offsets_not_array", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":4}})", four,
       {"'w'", "data_offsets"}},
      {"offsets_one", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4]}})", four,
       {"'w'", "data_offsets"}},
      {"offsets_three", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}})", four,
       {"'w'", "data_offsets"}},
      {"offsets_string", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":["0",4]}})", four,
       {"'w'", "data_offsets", "non-negative integers"}},
      {"offsets_float", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0.0,4.0]}})", four,
       {"'w'", "data_offsets", "non-negative integers"}},
      {"offsets_negative", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", four,
       {"'w'", "data_offsets", "non-negative integers"}},
      {"offsets_reversed", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", four,
       {"'w'", "begin is after end"}},
      {"offsets_past_end", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", four,
       {"'w'", "truncated", "[0, 8]"}},
      {"offsets_huge", R"({"w":{"dtype":"F32","shape":[1],)"
                       R"("data_offsets":[18446744073709551612,18446744073709551615]}})",
       four, {"'w'", "truncated"}},
      {"size_mismatch_short", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", four,
       {"'w'", "4 bytes", "needs 8"}},
      {"size_mismatch_long", R"({"w":{"dtype":"I16","shape":[1],"data_offsets":[0,4]}})", four,
       {"'w'", "4 bytes", "needs 2"}},
      {"bool_bad_byte", R"({"w":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})",
       std::string("\x01\x02", 2), {"'w'", "0x02"}},
      {"metadata_not_object", R"({"__metadata__":["a"]})", "", {"__metadata__", "object"}},
      {"metadata_value_number", R"({"__metadata__":{"epoch":3}})", "",
       {"__metadata__", "'epoch'", "string"}},
      {"metadata_value_null", R"({"__metadata__":{"k":null}})", "", {"__metadata__", "'k'"}},
      {"second_tensor_bad", "{\"ok\":{" + f32x1 + R"(},"bad.one":{"dtype":"F32","shape":[1]}})",
       four, {"'bad.one'", "data_offsets"}},
      {"control_char_name", "{\"a\\nb\":{\"dtype\":\"X\",\"shape\":[],\"data_offsets\":[0,0]}}",
       "", {"'a\\x0ab'", "unknown dtype"}},
  };
  expect_each_rejected(cases);
}

TEST_F(SafetensorsTest, TruncatedDataSectionOfAWrittenFile) {
  const fs::path p = file("cut.safetensors");
  st::write(p, {{"a", torch::ones({4}, torch::kFloat32)}, {"layer.weight", torch::ones({8})}});
  const std::string bytes = read_bytes(p);
  write_bytes(p, bytes.substr(0, bytes.size() - 1));
  const std::string msg = open_error(p);
  expect_names_file(msg, p);
  EXPECT_THAT(msg, HasSubstr("'layer.weight'"));
  EXPECT_THAT(msg, HasSubstr("truncated"));

  // Cut inside the header: the header length now exceeds the file.
  write_bytes(p, bytes.substr(0, 20));
  const std::string msg2 = open_error(p);
  expect_names_file(msg2, p);
  EXPECT_THAT(msg2, HasSubstr("header length"));
}

// ---------------------------------------------------------------------------------------------
// writing: failures and atomicity

TEST_F(SafetensorsTest, WriteIntoMissingDirectoryLeavesNothing) {
  const fs::path p = file("no_such_dir") / "out.safetensors";
  const std::string msg = input_error([&] { st::write(p, {{"x", torch::ones({2})}}); });
  expect_names_file(msg, p);
  EXPECT_FALSE(fs::exists(p.parent_path()));
  EXPECT_TRUE(dir_entries().empty());
}

TEST_F(SafetensorsTest, UnsupportedDtypeIsInputErrorAndLeavesNothing) {
  const fs::path p = file("complex.safetensors");
  const std::string msg = input_error([&] {
    st::write(p, {{"fine", torch::ones({2})},
                  {"rotor.weight", torch::ones({2}, torch::kComplexFloat)}});
  });
  expect_names_file(msg, p);
  EXPECT_THAT(msg, HasSubstr("'rotor.weight'"));
  EXPECT_THAT(msg, HasSubstr("not supported"));
  EXPECT_TRUE(dir_entries().empty());

  const std::string msg2 =
      input_error([&] { st::write(p, {{"u16", torch::ones({2}, torch::kUInt16)}}); });
  EXPECT_THAT(msg2, HasSubstr("'u16'"));
  EXPECT_TRUE(dir_entries().empty());
}

TEST_F(SafetensorsTest, DuplicateReservedAndUndefinedNamesAreInputErrors) {
  const fs::path p = file("dup.safetensors");
  std::string msg = input_error([&] {
    st::write(p, {{"w", torch::ones({1})}, {"v", torch::ones({1})}, {"w", torch::zeros({1})}});
  });
  expect_names_file(msg, p);
  EXPECT_THAT(msg, HasSubstr("'w'"));
  EXPECT_THAT(msg, HasSubstr("duplicate"));

  msg = input_error([&] { st::write(p, {{"__metadata__", torch::ones({1})}}); });
  expect_names_file(msg, p);
  EXPECT_THAT(msg, HasSubstr("reserved"));

  msg = input_error([&] { st::write(p, {{"nothing", torch::Tensor()}}); });
  expect_names_file(msg, p);
  EXPECT_THAT(msg, HasSubstr("'nothing'"));
  EXPECT_TRUE(dir_entries().empty());
}

TEST_F(SafetensorsTest, NonUtf8NameIsInputErrorAndLeavesNothing) {
  const fs::path p = file("utf8.safetensors");
  const std::string msg = input_error([&] { st::write(p, {{"bad\xff", torch::ones({1})}}); });
  expect_names_file(msg, p);
  EXPECT_TRUE(dir_entries().empty());
}

TEST_F(SafetensorsTest, OverwriteReplacesFileAtomically) {
  const fs::path p = file("model.safetensors");
  st::write(p, {{"old", torch::zeros({1000}, torch::kFloat64)}}, {{"v", "1"}});
  struct stat before {};
  ASSERT_EQ(::stat(p.c_str(), &before), 0);
  // Someone still holding the old file keeps seeing it whole: the new file is a new inode that
  // is renamed over the path, not a rewrite in place.
  std::ifstream held(p, std::ios::binary);
  ASSERT_TRUE(held.good());

  st::write(p, {{"new", torch::ones({3}, torch::kInt32)}}, {{"v", "2"}});
  struct stat after {};
  ASSERT_EQ(::stat(p.c_str(), &after), 0);
  EXPECT_NE(before.st_ino, after.st_ino);

  const st::File f = st::File::open(p);
  EXPECT_EQ(f.names(), std::vector<std::string>{"new"});
  EXPECT_EQ(f.metadata().at("v"), "2");
  EXPECT_TRUE(torch::equal(f.tensor("new"), torch::ones({3}, torch::kInt32)));
  EXPECT_EQ(dir_entries(), std::vector<std::string>{"model.safetensors"});  // no temp file left

  std::stringstream old_bytes;
  old_bytes << held.rdbuf();
  EXPECT_EQ(old_bytes.str().size(), static_cast<size_t>(before.st_size));
}

TEST_F(SafetensorsTest, FailedWriteLeavesExistingFileIntact) {
  const fs::path p = file("keep.safetensors");
  st::write(p, {{"x", torch::arange(5, torch::kInt64)}});
  const std::string original = read_bytes(p);
  input_error([&] { st::write(p, {{"x", torch::ones({1}, torch::kComplexDouble)}}); });
  input_error([&] { st::write(p, {{"x", torch::ones({1})}, {"x", torch::ones({1})}}); });
  EXPECT_EQ(read_bytes(p), original);
  EXPECT_EQ(dir_entries(), std::vector<std::string>{"keep.safetensors"});
}

TEST_F(SafetensorsTest, WriteOverADirectoryLeavesNothingBehind) {
  // The target is a non-empty directory: the writer (engine/output_file.h) refuses it before any
  // temp file exists, names the file, and leaves the directory and its contents alone.
  const fs::path p = file("occupied.safetensors");
  fs::create_directories(p);
  write_bytes(p / "inside", "keep me");
  const std::string msg = input_error([&] { st::write(p, {{"x", torch::ones({4})}}); });
  expect_names_file(msg, p);
  EXPECT_THAT(msg, HasSubstr("directory"));
  EXPECT_EQ(dir_entries(), std::vector<std::string>{"occupied.safetensors"});
  EXPECT_TRUE(fs::is_directory(p));
  EXPECT_EQ(read_bytes(p / "inside"), "keep me");
}

// ---------------------------------------------------------------------------------------------
// interchange with the reference implementation (Python's `safetensors` package)

// The same tensors, built identically in C++ and in the Python script below.
Named interchange_tensors() {
  return {
      {"f64", torch::arange(6, torch::kFloat64).reshape({2, 3}) / 8 - 1},
      {"f32", torch::arange(12, torch::kFloat32).reshape({3, 4}) * 0.25},
      {"f16", torch::arange(8, torch::kFloat16) * 0.5 - 2},
      {"bf16", torch::arange(8, torch::kBFloat16) * 0.25 - 1},
      {"i64", torch::arange(5, torch::kInt64) * int64_t{-1000000000000}},
      {"i32", torch::arange(-3, 3, torch::kInt32)},
      {"i16", torch::arange(4, torch::kInt16) * -300},
      {"i8", torch::arange(-128, 128, 64, torch::kInt8)},
      {"u8", torch::arange(0, 256, 51, torch::kUInt8)},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(2.5f)},
      {"empty", torch::zeros({0, 3}, torch::kFloat32)},
  };
}

constexpr const char* kInterchangeScript = R"PY(
import sys, torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
ours, theirs = sys.argv[1], sys.argv[2]
want = {
    "f64": torch.arange(6, dtype=torch.float64).reshape(2, 3) / 8 - 1,
    "f32": torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.25,
    "f16": torch.arange(8, dtype=torch.float16) * 0.5 - 2,
    "bf16": torch.arange(8, dtype=torch.bfloat16) * 0.25 - 1,
    "i64": torch.arange(5, dtype=torch.int64) * -1000000000000,
    "i32": torch.arange(-3, 3, dtype=torch.int32),
    "i16": torch.arange(4, dtype=torch.int16) * -300,
    "i8": torch.arange(-128, 128, 64, dtype=torch.int8),
    "u8": torch.arange(0, 256, 51, dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(2.5),
    "empty": torch.zeros(0, 3),
}
got = load_file(ours)
assert sorted(got) == sorted(want), sorted(got)
for k, v in want.items():
    g = got[k]
    assert g.dtype == v.dtype and g.shape == v.shape and torch.equal(g, v), (k, g, v)
with safe_open(ours, "pt") as f:
    assert f.metadata() == {"origin": "c++"}, f.metadata()
save_file(want, theirs, metadata={"origin": "python", "format": "pt"})
print("python interchange ok")
)PY";

std::string sh_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

TEST_F(SafetensorsTest, InterchangeWithPythonSafetensors) {
  const std::string python = MAMBADIFF_PYTHON;
  const fs::path script = file("interchange.py");
  const fs::path ours = file("ours.safetensors");
  const fs::path theirs = file("theirs.safetensors");
  const fs::path log = file("python.log");
  write_bytes(script, kInterchangeScript);
  st::write(ours, interchange_tensors(), {{"origin", "c++"}});

  const std::string cmd = fmt::format("{} {} {} {} > {} 2>&1", sh_quote(python),
                                      sh_quote(script.string()), sh_quote(ours.string()),
                                      sh_quote(theirs.string()), sh_quote(log.string()));
  const int rc = std::system(cmd.c_str());
  ASSERT_EQ(rc, 0) << "python (" << python << ", with torch and safetensors) failed; the project "
                   << "installs it. Command: " << cmd << "\nOutput:\n"
                   << read_bytes(log);

  const st::File f = st::File::open(theirs);
  EXPECT_EQ(f.metadata(),
            (std::map<std::string, std::string>{{"origin", "python"}, {"format", "pt"}}));
  const Named want = interchange_tensors();
  std::vector<std::string> names;
  for (const auto& [name, t] : want) names.push_back(name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(f.names(), names);
  for (const auto& [name, t] : want) {
    SCOPED_TRACE(name);
    const torch::Tensor got = f.tensor(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type());
    EXPECT_EQ(got.sizes().vec(), t.sizes().vec());
    EXPECT_TRUE(torch::equal(got, t));
  }
  EXPECT_EQ(header_of(theirs).size() % 8, 0u);
}

}  // namespace
