// The mutant catalog (SPEC §7): deliberately broken paths and caches, each reproducing one real
// class of divergence from REFERENCE.md ("Reported divergences"). `mambadiff mutants` runs
// `check`'s scenario matrix against every one and requires all to be killed.
//
// Mutants live with the tests and never in the product path registry: the commands that run them
// (repro, reduce, mutants) and the tests call install_mutant_paths(), which plugs them into
// evaluate_path() under the names "mutant:<name>" (harness/path_registry.h PathProvider).
//
// Adding a mutant: the broken kernel as a ChunkedPath override in path_mutants.{h,cpp} (or a
// CacheOps in cache_mutants.{h,cpp} for a cache bug), the broken line marked MUTANT(<name>), and one
// entry in the table of catalog.cpp with the line naming the public report it reproduces.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/execution_path.h"
#include "harness/scenario_runner.h"

namespace mambadiff::mutants {

inline constexpr const char* kMutantPrefix = "mutant:";

struct Mutant {
  std::string name;        // without the prefix, e.g. "inter-chunk-axis"
  std::string reproduces;  // one line naming the public report of the class
  std::string broken;      // one line: what this mutant breaks
  // The path (a broken `chunked` on the CPU in the scenario's dtype, or the real one under the
  // mutant's name when only the cache is broken).
  std::function<std::unique_ptr<ExecutionPath>(const Mamba2Checkpoint&, torch::ScalarType)> make_path;
  // The broken cache ops; null: the real cache's.
  std::function<std::unique_ptr<CacheOps>()> make_cache_ops;

  std::string path_name() const { return kMutantPrefix + name; }
  // Plays the scenario on the mutant (its path and its cache).
  ScenarioResult evaluate(const Scenario& scenario, const Mamba2Checkpoint& checkpoint) const;
};

const std::vector<Mutant>& mutant_catalog();

// By name, with or without the "mutant:" prefix. InputError listing the catalog otherwise.
const Mutant& find_mutant(const std::string& name);

// Plugs the catalog into evaluate_path() / path_available() as "mutant:<name>". Idempotent.
void install_mutant_paths();

}  // namespace mambadiff::mutants
