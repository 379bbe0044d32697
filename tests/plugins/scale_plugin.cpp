// A test plugin: one per-sample stage that multiplies features by `factor`.
#include <pipe/plugin.h>

namespace {

class Scale : public pipeline::MapStage {
 public:
  explicit Scale(const pipeline::Params& p) : factor_(static_cast<float>(p.number("factor"))) {}
  void process(pipeline::Sample& s, pipeline::Rng&) override {
    const float v = s.features.ptr()[0] * factor_;
    s.features = pipeline::Tensor::copy_of(&v, {1});
  }

 private:
  float factor_;
};

[[maybe_unused]] void register_stages(pipeline::Registry& r) {
  pipeline::StageSchema s;
  s.name = PIPE_TEST_STAGE_NAME;
  s.doc = "Multiplies features by a factor (test plugin).";
  s.consumes = s.produces = pipeline::Payload::features;
  s.param({"factor", pipeline::ParamType::number, "multiplier", pipeline::ParamValue{2.0}, -100, 100, {}, -1});
  r.add(s, [](const pipeline::Params& p, const pipeline::StageContext&) { return std::make_unique<Scale>(p); });
}

}  // namespace

#ifdef PIPE_TEST_BAD_ABI
// Hand-written descriptor claiming an ABI this pipe does not speak.
extern "C" __attribute__((visibility("default"))) const pipe_plugin_descriptor* pipe_plugin_entry() {
  static const pipe_plugin_descriptor d = {sizeof(pipe_plugin_descriptor), 999u, PIPE_API_MAJOR, PIPE_API_MINOR,
                                           "bad_abi", "1.0", PIPE_BUILD_FINGERPRINT, register_stages};
  return &d;
}
#elif defined(PIPE_TEST_NEWER_API)
// Built against a newer minor API than this host provides.
extern "C" __attribute__((visibility("default"))) const pipe_plugin_descriptor* pipe_plugin_entry() {
  static const pipe_plugin_descriptor d = {sizeof(pipe_plugin_descriptor), PIPE_PLUGIN_ABI_VERSION, PIPE_API_MAJOR,
                                           PIPE_API_MINOR + 1, "newer_api", "1.0", PIPE_BUILD_FINGERPRINT,
                                           register_stages};
  return &d;
}
#elif defined(PIPE_TEST_BAD_FINGERPRINT)
extern "C" __attribute__((visibility("default"))) const pipe_plugin_descriptor* pipe_plugin_entry() {
  static const pipe_plugin_descriptor d = {sizeof(pipe_plugin_descriptor), PIPE_PLUGIN_ABI_VERSION, PIPE_API_MAJOR,
                                           PIPE_API_MINOR, "bad_fp", "1.0",
                                           "gcc-12;cxx11abi=1;torch=2.1;opencv=4.6.0;tbb=2021.8", register_stages};
  return &d;
}
#elif defined(PIPE_TEST_NO_ENTRY)
// No entry point at all: the loader must refuse it by name.
extern "C" __attribute__((visibility("default"))) int not_a_pipe_plugin() { return 0; }
#else
PIPE_PLUGIN("scale_plugin", "1.0.0", register_stages)
#endif
