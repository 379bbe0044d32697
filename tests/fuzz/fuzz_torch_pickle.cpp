#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  pipeline::fuzz::torch_pickle_one(data, size);
  return 0;
}
