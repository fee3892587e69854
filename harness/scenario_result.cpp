#include "harness/scenario_result.h"

namespace mambadiff {

CacheState CacheState::of(const Mamba2Cache& cache) {
  CacheState s;
  for (const auto& t : cache.conv_states) s.conv_states.push_back(t.detach().clone());
  for (const auto& t : cache.ssm_states) s.ssm_states.push_back(t.detach().clone());
  s.seqlen_offset = cache.seqlen_offset;
  return s;
}

}  // namespace mambadiff
