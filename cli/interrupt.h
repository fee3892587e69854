// Ctrl-C for the long-running commands (optimize, reduce, generate): while an InterruptScope
// lives, SIGINT only sets a flag that the work polls between steps; the command then stops, keeps
// what it has (the best case so far, the tokens generated, the Δ reached), says so and exits 1.
// A second Ctrl-C after the scope has ended gets the default action again.
#pragma once

#include <atomic>
#include <csignal>

namespace mambadiff::cli {

class InterruptScope {
 public:
  InterruptScope() : previous_(std::signal(SIGINT, on_sigint)) { flag().store(false); }
  ~InterruptScope() { end(); }
  // Ends the scope early (the default action of Ctrl-C again); the destructor then does nothing.
  void end() {
    if (active_) std::signal(SIGINT, previous_);
    active_ = false;
  }
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;

  // The flag the work polls.
  const std::atomic<bool>* flag_ptr() const { return &flag(); }
  bool interrupted() const { return flag().load(); }

 private:
  static std::atomic<bool>& flag() {
    static std::atomic<bool> interrupted{false};  // lock-free: safe to set from a signal handler
    return interrupted;
  }
  static void on_sigint(int) { flag().store(true); }
  void (*previous_)(int);
  bool active_ = true;
};

}  // namespace mambadiff::cli
