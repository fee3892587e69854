// Default ASan options of the libFuzzer binaries (an ASAN_OPTIONS in the environment still wins,
// key by key: ClusterFuzzLite's and OSS-Fuzz's settings apply unchanged).
//
// malloc_context_size=0: ASan records the call stack of every allocation, for the "allocated at"
// part of its reports. The differential targets allocate thousands of small ATen tensors per input,
// and recording those stacks (StackDepot::Put) was 14 % of model_script's samples (perf on this
// machine, 2026-12-02); without it model_script ran 27 % more inputs per CPU-second. Detection is
// unchanged — overflows, use-after-free and leaks are still caught and reported where they happen;
// to see where a reported block was allocated, rerun the reproducer with
// ASAN_OPTIONS=malloc_context_size=30.
extern "C" const char* __asan_default_options() { return "malloc_context_size=0"; }
