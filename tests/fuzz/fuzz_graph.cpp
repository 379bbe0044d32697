#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static pipeline::Registry* registry = [] {
    auto* r = new pipeline::Registry();
    pipeline::fuzz::register_fuzz_stages(*r);
    return r;
  }();
  pipeline::fuzz::graph_one(*registry, data, size);
  return 0;
}
