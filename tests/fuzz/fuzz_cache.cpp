#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  pipeline::fuzz::cache_one(data, size);
  return 0;
}
