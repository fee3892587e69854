// Where the embedded corpus (corpus/models, corpus/scenarios, ...) is, found at run time: a binary
// built in one clone must read its own clone's corpus, not the folder it was configured in.
//
// Order (the first that applies wins):
//   1. $MAMBADIFF_CORPUS: a corpus folder (holding models/); an error if it is not a folder.
//   2. The binary's own tree: from the folder of /proc/self/exe (symlinks resolved) upwards, the
//      first folder holding corpus/models (build/mambadiff in a clone finds that clone's corpus).
//   3. The working tree: the same walk from the current directory (a binary copied out of its
//      clone and run inside one).
// `check`'s --model default additionally honours $MAMBADIFF_MODELS (a folder of models).
#pragma once

#include <filesystem>

namespace mambadiff {

// The corpus folder by the order above. InputError naming MAMBADIFF_CORPUS when none is found.
std::filesystem::path corpus_dir();

// The folder of the running executable (/proc/self/exe resolved); empty when it cannot be read.
std::filesystem::path executable_dir();

}  // namespace mambadiff
