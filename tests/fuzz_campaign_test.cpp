// `mambadiff fuzz` (harness/fuzz_campaign.h): libFuzzer's output parsed, crashes keyed and
// deduplicated, and the whole command run against a stand-in libFuzzer target
// (tests/fuzz_stand_in/stand_in_target.cpp, two planted bugs) for exit codes, bad usage, the JSON,
// atomic outputs and Ctrl-C.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "harness/fuzz_campaign.h"
#include "mutants/catalog.h"
#include "tests/test_support.h"

namespace mambadiff {
namespace {
namespace fs = std::filesystem;
using test_support::read_text;
using test_support::run_cli;

// Lines as libFuzzer 14 prints them (fork mode; the ordinary mode), copied from its output.
TEST(FuzzProgress, ForkModeLine) {
  const auto p = parse_libfuzzer_progress(
      "#103035: cov: 15 ft: 84 corp: 24 exec/s 0 oom/timeout/crash: 1/2/52 time: 8s job: 53 dft_time: 0");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->execs, 103035u);
  EXPECT_EQ(p->coverage, 15u);
  EXPECT_EQ(p->features, 84u);
  EXPECT_EQ(p->corpus, 24u);
  EXPECT_EQ(p->crashes, 55u);
  ASSERT_TRUE(p->time_s);
  EXPECT_EQ(*p->time_s, 8.0);
}

TEST(FuzzProgress, OrdinaryModeLine) {
  const auto p = parse_libfuzzer_progress("#4096\tpulse  cov: 15 ft: 84 corp: 24/120b lim: 4 exec/s: 2048 rss: 30Mb");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->execs, 4096u);
  EXPECT_EQ(p->coverage, 15u);
  EXPECT_EQ(p->corpus, 24u);
  EXPECT_EQ(p->crashes, 0u);
  EXPECT_FALSE(p->time_s);
}

TEST(FuzzProgress, OtherLinesAreNotProgress) {
  EXPECT_FALSE(parse_libfuzzer_progress("INFO: Seed: 4070836491"));
  EXPECT_FALSE(parse_libfuzzer_progress("==8048== ERROR: libFuzzer: deadly signal"));
  EXPECT_FALSE(parse_libfuzzer_progress("    #4 0x55c301f4a38e in LLVMFuzzerTestOneInput /tmp/t.cpp:7:119"));
  EXPECT_FALSE(parse_libfuzzer_progress("#2\tDONE   exec/s: 0 rss: 27Mb"));
}

// Two reports of the same null write, from different runs (other pids, addresses, inputs).
std::string segv_report(int pid, const std::string& address, const std::string& caller) {
  return "==" + std::to_string(pid) + "==ERROR: AddressSanitizer: SEGV on unknown address 0x000000000000 (pc " +
         address + ")\n==" + std::to_string(pid) +
         "==The signal is caused by a WRITE memory access.\n"
         "    #0 " + address + " in mambadiff::decode_config(unsigned char const*, unsigned long) /src/fuzz/decode.cpp:40:7\n"
         "    #1 0x55bac4c402a3 in " + caller + " /src/fuzz/scan_diff.cpp:12:3\n"
         "    #2 0x55bac4c402a3 in LLVMFuzzerTestOneInput /src/fuzz/scan_diff.cpp:30:3\n"
         "    #3 0x55bac4c402a3 in fuzzer::Fuzzer::ExecuteCallback(unsigned char const*, unsigned long) (/b/scan_diff+0x432a3)\n"
         "    #4 0x55bac4c24940 in main (/b/scan_diff+0x27940)\n\n"
         "SUMMARY: AddressSanitizer: SEGV /src/fuzz/decode.cpp:40:7 in mambadiff::decode_config(unsigned char const*, unsigned long)\n";
}

TEST(FuzzClassify, SameStackSameKeyAcrossRuns) {
  const auto a = classify_crash_output(segv_report(101, "0x55bac4d1a1de", "run_case"));
  const auto b = classify_crash_output(segv_report(202, "0x5600000001de", "run_case"));
  EXPECT_EQ(a.kind, "asan SEGV");
  EXPECT_EQ(a.signature, "mambadiff::decode_config < run_case < LLVMFuzzerTestOneInput");
  EXPECT_EQ(a.key(), b.key());
  EXPECT_NE(a.first_divergence.find("decode.cpp:40"), std::string::npos) << a.first_divergence;
}

TEST(FuzzClassify, OtherCallerOtherKey) {
  const auto a = classify_crash_output(segv_report(101, "0x55bac4d1a1de", "run_case"));
  const auto b = classify_crash_output(segv_report(101, "0x55bac4d1a1de", "replay_case"));
  EXPECT_NE(a.key(), b.key());
}

TEST(FuzzClassify, SignatureLineWinsOverTheStack) {
  const std::string out = "Running: crash-1\nmambadiff-fuzz-signature: model_script|3|1|cache.ssm_states|continue\n"
                          "==77== ERROR: libFuzzer: deadly signal\n"
                          "    #0 0x55 in __sanitizer_print_stack_trace (/b/x+0xe9c91)\n"
                          "    #1 0x55 in fuzzer::PrintStackTrace() (/b/x+0x5c5e8)\n"
                          "    #4 0x55 in LLVMFuzzerTestOneInput /src/fuzz/model_script.cpp:7:119\n";
  const auto c = classify_crash_output(out);
  EXPECT_EQ(c.kind, "divergence");
  EXPECT_EQ(c.signature, "model_script|3|1|cache.ssm_states|continue");
  EXPECT_EQ(c.key(), c.signature);
  EXPECT_EQ(c.first_divergence, "op 3, layer 1, tensor cache.ssm_states, branch continue");
  // The same signature from another input (another stack depth, another pid) is the same finding.
  const auto d = classify_crash_output("mambadiff-fuzz-signature: model_script|3|1|cache.ssm_states|continue\n");
  EXPECT_EQ(c.key(), d.key());
  EXPECT_NE(c.key(), classify_crash_output("mambadiff-fuzz-signature: model_script|3|0|cache.ssm_states|continue\n").key());
}

TEST(FuzzClassify, RuntimeFramesAreSkipped) {
  const auto c = classify_crash_output(
      "==5== ERROR: libFuzzer: deadly signal\n"
      "    #0 0x55 in __sanitizer_print_stack_trace (/b/x+0xe9c91)\n"
      "    #1 0x55 in fuzzer::PrintStackTrace() (/b/x+0x5c5e8)\n"
      "    #3 0x7fc17fb7a04f  (/lib/x86_64-linux-gnu/libc.so.6+0x3c04f)\n"
      "    #4 0x55 in mambadiff::Scan::run() /src/engine/scan.cpp:7:119\n"
      "    #5 0x55 in LLVMFuzzerTestOneInput /src/fuzz/scan_diff.cpp:7:119\n"
      "SUMMARY: libFuzzer: deadly signal\n");
  EXPECT_EQ(c.kind, "deadly signal");
  EXPECT_EQ(c.signature, "mambadiff::Scan::run < LLVMFuzzerTestOneInput");
}

TEST(FuzzClassify, UbsanWithoutStackKeyedByLocation) {
  const auto c = classify_crash_output("/src/engine/config.cpp:88:21: runtime error: signed integer overflow: "
                                       "2147483647 + 1 cannot be represented in type 'int'\n"
                                       "SUMMARY: UndefinedBehaviorSanitizer: undefined-behavior /src/engine/config.cpp:88:21\n");
  EXPECT_EQ(c.kind, "runtime error");
  EXPECT_EQ(c.signature, "/src/engine/config.cpp:88:21");
}

// --- the command against the stand-in target ---------------------------------------------------

fs::path stand_in_dir() { return MAMBADIFF_FUZZ_STAND_IN_DIR; }

#define REQUIRE_STAND_IN()                                                                       \
  if (stand_in_dir().empty()) GTEST_SKIP() << "clang++ (libFuzzer) not found: no stand-in target"

fs::path campaign_dir(const std::string& name) { return test_support::fresh_dir("fuzz_campaign", name, false); }

std::string campaign_args(const fs::path& out, double seconds) {
  return "fuzz --time " + std::to_string(seconds) + " --jobs 1 --target scan_diff --minimize-time 2 --out " +
         out.string() + " --targets-dir " + stand_in_dir().string() + " --seeds-dir " + out.string() + "/no-seeds";
}

// Every file under `dir`, relative; and none of them a temporary one.
std::vector<std::string> leftovers(const fs::path& dir) {
  std::vector<std::string> bad;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.find(".tmp") != std::string::npos || name == ".work" || name.find(".old") != std::string::npos) {
      bad.push_back(fs::relative(e.path(), dir).string());
    }
  }
  return bad;
}

// The checks every finished campaign's output passes: the summary's shape and whole finding folders.
nlohmann::json check_outputs(const fs::path& out) {
  EXPECT_TRUE(leftovers(out).empty()) << leftovers(out).front();
  const auto j = nlohmann::json::parse(read_text(out / "summary.json"));
  EXPECT_EQ(j.at("targets").size(), 1u);
  for (const auto& t : j.at("targets")) {
    for (const char* key : {"name", "execs", "execs_per_sec", "corpus", "coverage", "findings"}) {
      EXPECT_TRUE(t.contains(key)) << key;
    }
  }
  for (const auto& f : j.at("findings")) {
    for (const char* key : {"target", "signature", "case", "first_divergence"}) EXPECT_TRUE(f.contains(key)) << key;
    const fs::path dir = f.at("dir").get<std::string>();
    EXPECT_TRUE(fs::is_regular_file(dir / "input")) << dir;
    EXPECT_TRUE(fs::is_regular_file(dir / "finding.json")) << dir;
    EXPECT_TRUE(fs::is_regular_file(dir / "report.txt")) << dir;
  }
  return j;
}

TEST(FuzzCommand, FindsBothPlantedBugsOnceEach) {
  REQUIRE_STAND_IN();
  const fs::path out = campaign_dir("finds");
  const auto r = run_cli(campaign_args(out, 5));  // the stand-in's two bugs are found in about a second
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("fuzz scan_diff: "), std::string::npos) << "no progress line:\n" << r.out;
  const auto j = check_outputs(out);
  const auto& t = j.at("targets").at(0);
  EXPECT_EQ(t.at("name"), "scan_diff");
  EXPECT_GT(t.at("execs").get<double>(), 0);
  EXPECT_GT(t.at("execs_per_sec").get<double>(), 0);
  EXPECT_GT(t.at("coverage").get<double>(), 0);
  EXPECT_GT(t.at("corpus").get<double>(), 0);
  EXPECT_TRUE(fs::is_directory(out / "corpus" / "scan_diff"));
  // Both bugs, each once, however many crash inputs libFuzzer saved for them.
  ASSERT_EQ(j.at("findings").size(), 2u) << j.dump(2);
  EXPECT_EQ(t.at("findings"), 2);
  EXPECT_GE(t.at("crash_inputs").get<int>(), 2);
  std::set<std::string> kinds;
  for (const auto& f : j.at("findings")) {
    kinds.insert(f.at("kind").get<std::string>());
    const std::string input = read_text(f.at("input").get<std::string>());
    if (f.at("kind") == "divergence") {
      EXPECT_EQ(f.at("signature"), "scan_diff|ssd_scan|0|y|tail-tile");
      EXPECT_EQ(f.at("first_divergence"), "op ssd_scan, layer 0, tensor y, branch tail-tile");
      ASSERT_TRUE(f.at("case").is_string());
      EXPECT_TRUE(fs::is_regular_file(fs::path(f.at("case").get<std::string>()) / "case.json"));
      EXPECT_NE(input.find("MD"), std::string::npos);
      EXPECT_LE(input.size(), 16u) << "not minimized";
    } else {
      EXPECT_EQ(f.at("kind"), "asan SEGV");
      EXPECT_TRUE(f.at("case").is_null());
      EXPECT_NE(input.find("QZ"), std::string::npos);
    }
  }
  EXPECT_EQ(kinds, (std::set<std::string>{"divergence", "asan SEGV"}));
}

TEST(FuzzCommand, NoFindingsExitZeroAndCorpusKeptAcrossRuns) {
  REQUIRE_STAND_IN();
  const fs::path out = campaign_dir("clean");
  const std::string cmd = "STAND_IN_CLEAN=1 " + std::string(MAMBADIFF_BINARY) + " " + campaign_args(out, 3) +
                          " --json " + (out.parent_path() / "clean.json").string() + " >/dev/null 2>&1";
  EXPECT_EQ(WEXITSTATUS(std::system(cmd.c_str())), 0);
  const auto j = check_outputs(out);
  EXPECT_TRUE(j.at("findings").empty());
  EXPECT_EQ(j, nlohmann::json::parse(read_text(out.parent_path() / "clean.json")));
  const auto corpus = j.at("targets").at(0).at("corpus").get<int>();
  EXPECT_GT(corpus, 0);
  // A second night starts from the merged corpus and keeps it.
  EXPECT_EQ(WEXITSTATUS(std::system(cmd.c_str())), 0);
  EXPECT_GE(nlohmann::json::parse(read_text(out / "summary.json")).at("targets").at(0).at("corpus").get<int>(), 1);
}

TEST(FuzzCommand, BadUsageExitsTwoWithOneLine) {
  REQUIRE_STAND_IN();
  const fs::path out = campaign_dir("bad");
  const std::string stand_in = " --targets-dir " + stand_in_dir().string();
  fs::create_directories(out.parent_path());
  test_support::write_text(out.parent_path() / "a-file", "x");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"fuzz --time 0 --jobs 1 --out " + out.string() + stand_in, "--time 0"},
      {"fuzz --time -5 --jobs 1 --out " + out.string() + stand_in, "--time -5"},
      {"fuzz --time nan --jobs 1 --out " + out.string() + stand_in, "--time"},
      {"fuzz --time 5 --jobs 0 --out " + out.string() + stand_in, "--jobs 0"},
      {"fuzz --time 5 --jobs -2 --out " + out.string() + stand_in, "--jobs -2"},
      {"fuzz --time 5 --jobs 1 --target scan_dif --out " + out.string() + stand_in, "'scan_dif'"},
      // The stand-in folder holds scan_diff only: every other target build is missing.
      {"fuzz --time 5 --jobs 1 --out " + out.string() + stand_in, "model_script"},
      {"fuzz --time 5 --jobs 1 --target scan_diff --out " + out.string() + " --targets-dir /nonexistent", "/nonexistent/scan_diff"},
      {"fuzz --time 5 --jobs 1 --target scan_diff --out " + (out.parent_path() / "a-file" / "out").string() + stand_in,
       "a-file/out"},
  };
  for (const auto& [args, named] : cases) {
    const auto r = run_cli(args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.out;
    EXPECT_NE(r.out.find(named), std::string::npos) << args << "\n" << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << args << "\n" << r.out;
  }
  EXPECT_FALSE(fs::exists(out / "summary.json"));
}

// The kill matrix starts every mutant from the seeds: without a seed corpus (an out-of-tree binary's
// default --seeds-dir does not exist) it refuses, instead of crediting a mutant with whatever the
// fuzzer meets first from an empty corpus.
TEST(FuzzCommand, KillMatrixRefusesAMissingSeedCorpus) {
  REQUIRE_STAND_IN();
  const fs::path out = campaign_dir("kill-no-seeds");
  const fs::path targets = out.parent_path() / "kill-no-seeds-targets";
  fs::create_directories(targets);
  for (const char* t : {"model_script", "scan_diff"}) {  // both differential target builds present
    fs::copy_file(stand_in_dir() / "scan_diff", targets / t, fs::copy_options::overwrite_existing);
  }
  const auto r = run_cli("fuzz --kill-matrix --time 5 --jobs 1 --out " + out.string() + " --targets-dir " +
                         targets.string() + " --seeds-dir " + (out.parent_path() / "no-such-seeds").string());
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("no-such-seeds/model_script"), std::string::npos) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_FALSE(fs::exists(out / "kill_matrix.json"));
}

// A finding is the mutant's only if the target without the mutant runs its input clean: the
// stand-in's "MD" divergence fires with or without a mutant (a divergence of the product itself),
// its "MX" one only with one loaded. With "MX" disarmed, every finding is "MD": never credited; with
// "MD" disarmed, "MX" is found and credited.
TEST(FuzzCommand, KillMatrixCreditsOnlyFindingsTheCleanTargetDoesNotMake) {
  REQUIRE_STAND_IN();
  const fs::path targets = campaign_dir("kill-credit-targets");
  const fs::path seeds = campaign_dir("kill-credit-seeds");
  fs::create_directories(targets);
  for (const char* t : {"model_script", "scan_diff"}) {
    fs::copy_file(stand_in_dir() / "scan_diff", targets / t, fs::copy_options::overwrite_existing);
    fs::create_directories(seeds / t);
    test_support::write_text(seeds / t / "seed", "M");  // one byte from either bug
  }
  const std::string mutant = mutants::mutant_catalog().front().name;
  const std::string common = " --jobs 1 --slice 2 --mutant " + mutant + " --targets-dir " + targets.string() +
                             " --seeds-dir " + seeds.string();
  const fs::path out = campaign_dir("kill-credit");
  const auto r = test_support::run_shell("STAND_IN_NO_MUTANT_BUG=1 " + std::string(MAMBADIFF_BINARY) +
                                         " fuzz --kill-matrix --time 3" + common + " --out " + out.string());
  EXPECT_EQ(r.exit_code, 1) << r.out;  // a mutant alive
  EXPECT_NE(r.out.find("not credited"), std::string::npos) << r.out;
  const auto j = nlohmann::json::parse(read_text(out / "kill_matrix.json"));
  EXPECT_FALSE(j["rows"][0]["found"].get<bool>()) << j.dump();
  EXPECT_GE(j["rows"][0]["not_credited"].get<int>(), 1) << j.dump();

  const fs::path out2 = campaign_dir("kill-credit-armed");
  const auto armed = test_support::run_shell("STAND_IN_NO_PRODUCT_BUG=1 " + std::string(MAMBADIFF_BINARY) +
                                             " fuzz --kill-matrix --time 30" + common + " --out " + out2.string());
  EXPECT_EQ(armed.exit_code, 0) << armed.out;
  const auto j2 = nlohmann::json::parse(read_text(out2 / "kill_matrix.json"));
  EXPECT_TRUE(j2["rows"][0]["found"].get<bool>()) << j2.dump();
  EXPECT_EQ(j2["rows"][0]["signature"], "model_script|0:forward|0|logits|prefill") << "credited: the mutant's own";
}

TEST(FuzzCommand, InterruptedCampaignMergesAndWritesItsFindings) {
  REQUIRE_STAND_IN();
  const fs::path out = campaign_dir("interrupt");
  const fs::path log = out.parent_path() / "interrupt.log";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (!freopen(log.c_str(), "w", stderr) || !freopen("/dev/null", "w", stdout)) _exit(126);
    execl(MAMBADIFF_BINARY, MAMBADIFF_BINARY, "fuzz", "--time", "300", "--jobs", "1", "--target", "scan_diff",
          "--minimize-time", "2", "--out", out.c_str(), "--targets-dir", stand_in_dir().c_str(), "--seeds-dir",
          "/nonexistent", static_cast<char*>(nullptr));
    _exit(127);
  }
  // Interrupted once the fuzzer has reported crash inputs (the stand-in's bugs take a few seconds).
  const auto start = std::chrono::steady_clock::now();
  // The log holds every progress line so far: look at the newest one.
  const auto crash_inputs_reported = [&log] {
    const std::string text = read_text(log);
    const auto at = text.rfind("crash inputs ");
    return at != std::string::npos && text.compare(at, 15, "crash inputs 0,") != 0;
  };
  while (!crash_inputs_reported()) {
    if (std::chrono::steady_clock::now() - start > std::chrono::seconds(60)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::this_thread::sleep_for(std::chrono::seconds(2));
  kill(pid, SIGINT);
  const auto interrupted_at = std::chrono::steady_clock::now();
  int status = 0;
  waitpid(pid, &status, 0);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - interrupted_at).count();
  // 5 s for libFuzzer to stop, the merge, at most 8 re-runs: well under a minute for the stand-in.
  EXPECT_LT(took, 60) << "the campaign did not stop promptly at Ctrl-C";
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1) << read_text(log);  // it had findings
  const auto j = check_outputs(out);
  EXPECT_TRUE(j.at("interrupted").get<bool>());
  EXPECT_FALSE(j.at("findings").empty());
  EXPECT_GT(j.at("targets").at(0).at("corpus").get<int>(), 0);
  EXPECT_GT(std::distance(fs::directory_iterator(out / "corpus" / "scan_diff"), fs::directory_iterator()), 0);
  // Crash inputs over the re-run budget are kept, not dropped.
  const auto unclassified = j.at("targets").at(0).at("unclassified_crash_inputs").get<long>();
  if (unclassified > 0) {
    EXPECT_EQ(std::distance(fs::directory_iterator(out / "unclassified" / "scan_diff"), fs::directory_iterator()),
              unclassified);
  }
}

TEST(FuzzCommand, StopAtFirstFindingRecordsTimeAndExecs) {
  REQUIRE_STAND_IN();
  const fs::path out = campaign_dir("first");
  const auto r = run_cli(campaign_args(out, 60) + " --stop-at-first-finding");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  const auto j = check_outputs(out);
  const auto& t = j.at("targets").at(0);
  ASSERT_FALSE(t.at("first_finding_s").is_null()) << j.dump(2);
  EXPECT_LT(t.at("first_finding_s").get<double>(), 60);
  EXPECT_EQ(j.at("findings").size(), 1u) << "fork mode without -ignore_crashes stops at the first";
}

}  // namespace
}  // namespace mambadiff
