#include "engine/output_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "engine/errors.h"

namespace mambadiff {

namespace {

[[noreturn]] void fail(const std::filesystem::path& file, const std::string& what) {
  throw InputError(fmt::format("{}: cannot write: {}", file.string(), what));
}

// Writes every piece to `fd`; the errno message of the first failure, or "" when all went out.
std::string write_all(int fd, const std::vector<std::string_view>& pieces) {
  for (std::string_view piece : pieces) {
    const char* p = piece.data();
    size_t n = piece.size();
    while (n > 0) {
      // At most 1 GiB per call: Linux writes at most 0x7ffff000 bytes at once anyway.
      const ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
      if (w < 0) {
        if (errno == EINTR) continue;
        return std::strerror(errno);
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
  }
  return "";
}

}  // namespace

void write_output_file(const std::filesystem::path& file, const std::vector<std::string_view>& pieces) {
  struct stat st {};
  if (::stat(file.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    if (S_ISDIR(st.st_mode)) fail(file, "it is a directory");
    // A device, FIFO or terminal: straight through, no temporary, no rename.
    const int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) fail(file, std::strerror(errno));
    const std::string err = write_all(fd, pieces);
    const int closed = ::close(fd);
    if (!err.empty()) fail(file, err);
    if (closed != 0) fail(file, fmt::format("close: {}", std::strerror(errno)));
    return;
  }

  const std::filesystem::path tmp = file.string() + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(file, fmt::format("cannot create the temporary file {}: {}", tmp.string(), std::strerror(errno)));
  auto abandon = [&](const std::string& what) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    fail(file, what);
  };
  std::string err = write_all(fd, pieces);
  if (err.empty() && ::fsync(fd) != 0) err = fmt::format("fsync: {}", std::strerror(errno));
  if (::close(fd) != 0 && err.empty()) err = fmt::format("close: {}", std::strerror(errno));
  if (!err.empty()) abandon(err);
  std::error_code ec;
  std::filesystem::rename(tmp, file, ec);
  if (ec) abandon(fmt::format("cannot rename {} over it: {}", tmp.string(), ec.message()));
}

void write_text_atomically(const std::filesystem::path& file, const std::string& text) {
  write_output_file(file, {std::string_view(text)});
}

void append_lines(const std::filesystem::path& file, const std::string& lines) {
  if (lines.empty()) return;
  if (lines.back() != '\n') fail(file, "internal: appended text must end in a newline");
  const int fd = ::open(file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) fail(file, std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail(file, fmt::format("fstat: {}", std::strerror(errno)));
  if (S_ISREG(st.st_mode) && st.st_size > 0) {
    // The descriptor is write-only: the last byte is read through a second one.
    char last = 0;
    const int rfd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    const bool read_ok = rfd >= 0 && ::pread(rfd, &last, 1, st.st_size - 1) == 1;
    if (rfd >= 0) ::close(rfd);
    if (!read_ok) fail(file, "cannot read its last byte to check that it ends a line");
    if (last != '\n') {
      fail(file, "the file does not end with a newline (an interrupted write by another program?); "
                 "refusing to append to it: repair or move it");
    }
  }
  // One call, so the lines arrive whole or not at all (a signal before the call leaves the file as it
  // was; O_APPEND makes the kernel place them at the end atomically for regular files).
  ssize_t w;
  do {
    w = ::write(fd, lines.data(), lines.size());
  } while (w < 0 && errno == EINTR);
  if (w < 0) fail(file, std::strerror(errno));
  if (static_cast<size_t>(w) != lines.size()) {
    fail(file, fmt::format("short append: {} of {} bytes written (disk full?); the last line is cut", w,
                           lines.size()));
  }
}

}  // namespace mambadiff
