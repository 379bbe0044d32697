// concat: joins the feature tensors of one sample from several branches into one vector.
//
// Join (fan-in), deterministic. Consumes `features` on two or more inputs, in the order the
// graph's edges list them; produces `features`: each input flattened, concatenated in that
// order (length = the sum of the inputs' element counts). The framework matches the inputs
// by sample id and calls it in sample order; a sample skipped on any branch is skipped.
// No params.
//
// Example config (graphs/multiscale.yaml):
//   both: {stage: concat}
//   edges: [features48 -> both, features32 -> both, both -> head]
#include <cstring>

#include <fmt/format.h>

#include "builtin.h"

namespace pipeline::stages {
namespace {

class Concat : public JoinStage {
 public:
  void process(std::vector<Sample>& inputs, Sample& out) override {
    int64_t total = 0;
    for (const Sample& s : inputs) {
      if (!s.features.defined())
        throw std::runtime_error("concat: an input carries no features (put a convbase before it)");
      total += s.features.numel();
    }
    float* dst = nullptr;
    out.features = Tensor::zeros({total}, &dst);
    for (const Sample& s : inputs) {
      std::memcpy(dst, s.features.ptr(), static_cast<size_t>(s.features.numel()) * sizeof(float));
      dst += s.features.numel();
    }
  }
};

}  // namespace

void register_concat(Registry& r) {
  r.add<Concat>(Schema("concat", "Joins the features of one sample from several branches: each flattened, "
                                 "concatenated in edge order.")
                    .consumes(Payload::features)
                    .produces(Payload::features)
                    .example("{stage: concat}"));
}

}  // namespace pipeline::stages
