// The main of every test executable. CTest runs one process per test suite (tests/CMakeLists.txt:
// a LibTorch process costs about half a second to start, and 300 of them were a third of `make
// test`), so the exit code speaks for the suite:
//   0   every test that ran passed (some may have skipped: GoogleTest lists them);
//   1   a test failed, or the filter matched no test at all (a suite that vanished is no pass);
//   77  every test that ran skipped (no CUDA device, no clang): CTest reports the suite skipped.
#include <gtest/gtest.h>

#include <cstdio>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int failed = RUN_ALL_TESTS();
  const ::testing::UnitTest& run = *::testing::UnitTest::GetInstance();
  if (failed != 0) return 1;
  if (run.test_to_run_count() == 0) {
    std::fprintf(stderr, "test_main: the filter matched no test\n");
    return 1;
  }
  if (run.skipped_test_count() == run.test_to_run_count()) return 77;
  return 0;
}
