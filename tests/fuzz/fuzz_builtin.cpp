// The fuzz build has no stages/builtin.cpp (it references the LibTorch stages' factories).
#include "targets.h"

namespace pipeline {

// registry.cpp's Registry::global() calls this; nothing in the fuzz targets uses global().
void register_builtin_stages(Registry& r) { fuzz::register_fuzz_stages(r); }

}  // namespace pipeline
