// The fuzz build's registry: the non-torch stages register through
// their own register_* functions, the LibTorch ones with their real schemas
// (stages/torch_schemas.cpp) and a factory that refuses, since clang cannot link LibTorch
// here (its OpenMP clashes with libgomp) and validation never builds a stage.
// test_fuzz_regressions checks that this lists the same stages and schemas as the real
// registry (a stage added to builtin.cpp only would go unfuzzed).
#include <stdexcept>

#include "builtin.h"
#include "targets.h"
#include "torch_schemas.h"

namespace pipeline {

namespace fuzz {

void register_fuzz_stages(Registry& r) {
  register_framework_stages(r);
  stages::register_fashion_mnist(r);
  stages::register_folder(r);
  stages::register_decode(r);
  stages::register_augment(r);
  stages::register_resize(r);
  stages::register_concat(r);
  stages::register_preview(r);
  for (StageSchema s : {stages::convbase_schema(), stages::dense_head_schema(), stages::train_base_schema()}) {
    const std::string name = s.name;
    r.add(std::move(s), [name](const Params&, const StageContext&) -> std::unique_ptr<Stage> {
      throw std::logic_error("the fuzz build has no LibTorch: cannot build stage " + name);
    });
  }
}

}  // namespace fuzz

}  // namespace pipeline
