// The kill matrix (SPEC §7, `mambadiff mutants`): `check`'s scenario matrix run against every
// mutant of the catalog. A check kills a mutant when the mutant diverges from the reference or
// from the `chunked` path on that scenario (under check's tolerance policy), or fails to run it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace mambadiff::mutants {

struct MutantKills {
  std::string name;
  std::string reproduces;
  std::vector<std::string> killed_by;  // checks ("<model>/<scenario>") that kill it, in matrix order
  std::vector<std::string> how;        // parallel to killed_by: which comparison, where it first parts
  // Seconds a `check` run with this mutant plugged in spends before its first kill: for each
  // scenario in matrix order up to the killing one, the reference, the plain baseline and the
  // `chunked` runs plus the mutant's own run and comparisons. Negative: never killed.
  double seconds_to_first_kill = -1.0;
  std::string case_dir;  // where its first kill was written as a case (KillOptions::cases_dir)
  bool killed() const { return !killed_by.empty(); }
};

struct KillMatrix {
  std::vector<std::string> checks;  // every check run, "<model>/<scenario>", in matrix order
  std::vector<MutantKills> mutants;
  uint64_t seed = 0;
  double seconds = 0.0;  // wall time of the whole run
  double kill_rate() const;
};

struct KillOptions {
  std::vector<std::filesystem::path> models;  // empty: check's embedded defaults
  uint64_t seed = 20261127;                   // check's default base seed
  std::vector<std::string> only_mutants;      // empty: the whole catalog
  std::filesystem::path cases_dir;            // when set: each mutant's first kill as a case
  bool progress = false;                      // a line per check on stderr
};

KillMatrix run_kill_matrix(const KillOptions& options);

// The matrix as text: a summary line per mutant and a check x mutant grid ('x' kills).
std::string kill_matrix_text(const KillMatrix& matrix);
// {"mutants": [{"name", "reproduces", "killed_by", "seconds_to_first_kill"}], "kill_rate", "seed", "seconds"}
std::string kill_matrix_json(const KillMatrix& matrix);

}  // namespace mambadiff::mutants
