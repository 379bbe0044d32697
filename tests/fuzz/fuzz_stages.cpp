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

namespace {
// Registers `schema` as a stage of kind Base (BatchStage, SinkStage) whose factory refuses.
template <typename Base>
void add_refusing(Registry& r, const Schema& schema) {
  const std::string name = schema.name();
  r.add<Base>(schema, [name](const Params&, const StageContext&) -> std::unique_ptr<Base> {
    throw std::logic_error("the fuzz build has no LibTorch: cannot build stage " + name);
  });
}
}  // namespace

void register_fuzz_stages(Registry& r) {
  register_framework_stages(r);
  stages::register_fashion_mnist(r);
  stages::register_folder(r);
  stages::register_csv(r);
  stages::register_decode(r);
  stages::register_augment(r);
  stages::register_resize(r);
  stages::register_concat(r);
  stages::register_preview(r);
  // The kinds are the bases of ConvBase, DenseHead and TrainBase; test_fuzz_regressions
  // compares the rendered reference with the real registry's.
  add_refusing<BatchStage>(r, stages::convbase_schema());
  add_refusing<SinkStage>(r, stages::dense_head_schema());
  add_refusing<SinkStage>(r, stages::train_base_schema());
}

}  // namespace fuzz

}  // namespace pipeline
