// The SDK's stage declarations (pipe/schema.h): typed parameters read back through their
// declaration, the kind taken from the stage's base class, declarations that contradict
// themselves refused at registration; and the stage harness (pipe/testing.h) calling each
// kind of stage as the executor does.
#include <catch2/catch.hpp>

#include <filesystem>
#include <functional>

#include <opencv2/core.hpp>
#include <unistd.h>

#include "pipe/registry.h"
#include "pipe/testing.h"

using namespace pipeline;
namespace fs = std::filesystem;

namespace {

enum class Mode { fast, exact };

const auto kCount = param::integer("count", 3, "how many").range(1, 10);
const auto kGain = param::number("gain", param::required, "a factor").min(0);
const auto kOn = param::boolean("on", true, "a switch");
const auto kName = param::string("name", "a", "a name").one_of({"a", "b"});
const auto kSize = param::integers("size", {2, 3}, "a size").range(1, 100).length(2);
const auto kMean = param::numbers("mean", {}, "a list");
const auto kTags = param::strings("tags", {"x"}, "tags");
const auto kMode = param::choice("mode", {{"fast", Mode::fast}, {"exact", Mode::exact}}, Mode::exact, "how");

struct Map : MapStage {
  explicit Map(const Params& p)
      : count(p.get(kCount)), gain(p.get(kGain)), on(p.get(kOn)), name(p.get(kName)), size(p.get(kSize)),
        mean(p.get(kMean)), tags(p.get(kTags)), mode(p.get(kMode)) {}
  void process(Sample&, Rng&) override {}
  int64_t count;
  double gain;
  bool on;
  std::string name;
  std::vector<int64_t> size;
  std::vector<double> mean;
  std::vector<std::string> tags;
  Mode mode;
};
struct Batcher : BatchStage {
  int batch_size() const override { return 2; }
  void process(Batch&) override {}
};
struct Joiner : JoinStage {
  void process(std::vector<Sample>&, Sample&) override {}
};
struct Sink : SinkStage {
  Sink(const Params&, const StageContext& ctx) : node(ctx.node) {}
  void begin_epoch(Split, int) override {}
  void consume(Batch&) override {}
  SplitMetrics end_epoch() override { return {}; }
  std::string node;
};

Schema all_params() {
  return Schema("m", "doc")
      .param(kCount).param(kGain).param(kOn).param(kName).param(kSize).param(kMean).param(kTags).param(kMode);
}

}  // namespace

TEST_CASE("typed declarations: one schema for the validator, typed values for the stage") {
  Registry r;
  r.add<Map>(all_params().random().consumes(Payload::image).produces(Payload::image).example("{stage: m}"));
  r.add<Batcher>(Schema("b", "doc").device());
  r.add<Joiner>(Schema("j", "doc"));
  r.add<Sink>(Schema("s", "doc").train_only());
  r.add<Map>(Schema("serial_map", "doc").serial().param(kGain));

  SECTION("the kind comes from the base class; batch stages and sinks are serial") {
    const StageSchema& m = r.find("m")->schema;
    CHECK(m.kind == StageKind::map);
    CHECK(m.concurrency == Concurrency::parallel);
    CHECK(m.random);
    CHECK(m.consumes == Payload::image);
    CHECK(m.example == "{stage: m}");
    CHECK(r.find("b")->schema.kind == StageKind::batch_map);
    CHECK(r.find("b")->schema.concurrency == Concurrency::serial);
    CHECK(r.find("b")->schema.has_device);
    CHECK(r.find("j")->schema.kind == StageKind::join);
    CHECK(r.find("j")->schema.concurrency == Concurrency::parallel);
    CHECK(r.find("s")->schema.kind == StageKind::sink);
    CHECK(r.find("s")->schema.concurrency == Concurrency::serial);
    CHECK(r.find("s")->schema.train_only);
    CHECK(r.find("serial_map")->schema.concurrency == Concurrency::serial);
  }

  SECTION("the ParamSpecs say what the declarations say") {
    const StageSchema& m = r.find("m")->schema;
    REQUIRE(m.params.size() == 8);
    const ParamSpec& count = m.params[0];
    CHECK(count.name == "count");
    CHECK(count.type == ParamType::integer);
    CHECK(count.doc == "how many");
    CHECK(std::get<int64_t>(*count.default_value) == 3);
    CHECK(*count.min == 1);
    CHECK(*count.max == 10);
    CHECK_FALSE(m.params[1].default_value);  // required
    CHECK(m.params[3].choices == std::vector<std::string>{"a", "b"});
    CHECK(m.params[4].list_size == 2);
    CHECK(m.params[4].type == ParamType::integer_list);
    CHECK(m.params[5].type == ParamType::number_list);
    CHECK(m.params[6].type == ParamType::string_list);
    const ParamSpec& mode = m.params[7];
    CHECK(mode.type == ParamType::string);
    CHECK(mode.choices == std::vector<std::string>{"fast", "exact"});
    CHECK(std::get<std::string>(*mode.default_value) == "exact");
  }

  SECTION("values reach the constructor validated and typed, a choice as its enum") {
    testing::HarnessOptions o;
    o.registry = &r;
    testing::Harness h("{stage: m, gain: 2, mode: fast, size: [4, 5], tags: [p, q]}", o);
    const auto& m = dynamic_cast<const Map&>(h.stage());
    CHECK(m.count == 3);
    CHECK(m.gain == 2.0);  // an integer in YAML, a number to the stage
    CHECK(m.on);
    CHECK(m.name == "a");
    CHECK(m.size == std::vector<int64_t>{4, 5});
    CHECK(m.mean.empty());
    CHECK(m.tags == std::vector<std::string>{"p", "q"});
    CHECK(m.mode == Mode::fast);
    CHECK(dynamic_cast<const Map&>(testing::Harness("{stage: m, gain: 0}", o).stage()).mode == Mode::exact);
    CHECK_THROWS_WITH(testing::Harness("{stage: m, gain: 1, mode: slow}", o),
                      Catch::Contains("parameter 'mode' of stage 'm' is 'slow'; expected one of 'fast', 'exact'"));
    CHECK_THROWS_WITH(testing::Harness("{stage: m}", o), Catch::Contains("missing required parameter 'gain'"));
  }

  SECTION("a factory, and the untyped registration of older plugins") {
    r.add<Sink>(Schema("s2", "doc"), [](const Params& p, const StageContext& ctx) {
      StageContext renamed = ctx;
      renamed.node = "made:" + ctx.node;
      return std::make_unique<Sink>(p, renamed);
    });
    CHECK(r.find("s2")->schema.kind == StageKind::sink);
    StageSchema old;
    old.name = "old";
    old.kind = StageKind::batch_map;
    r.add(old, [](const Params&, const StageContext&) { return std::make_unique<Batcher>(); });
    CHECK(r.find("old")->schema.kind == StageKind::batch_map);
  }
}

TEST_CASE("a declaration that contradicts itself is refused when the stage registers") {
  Registry r;
  // Schemas are built in register functions: their checks run there.
  const auto refused = [&](const std::function<Schema()>& declare) {
    try {
      r.add<Map>(declare());
    } catch (const std::logic_error& e) {
      return std::string(e.what());
    }
    return std::string("registered");
  };
  CHECK(refused([] { return Schema("x", "").param(param::integer("n", 0, "").range(1, 5)); }) ==
        "stage 'x', parameter 'n': the default is out of range");
  CHECK(refused([] { return Schema("x", "").param(param::integers("n", {1}, "").length(2)); }) ==
        "stage 'x', parameter 'n': the default has the wrong length");
  CHECK(refused([] { return Schema("x", "").param(param::strings("n", {"c"}, "").one_of({"a", "b"})); }) ==
        "stage 'x', parameter 'n': the default is not one of the choices");
  CHECK(refused([] { return Schema("x", "").param(param::choice("n", {{"a", Mode::fast}}, Mode::exact, "")); }) ==
        "stage 'x', parameter 'n': the default is not one of the choices");
  CHECK(refused([] { return Schema("x", "").param(kCount).param(kCount); }) ==
        "stage 'x', parameter 'count': declared twice");
  CHECK(refused([] { return Schema("x", "").train_only(); }) == "stage 'x': train_only() is for sinks");
  CHECK(r.names().empty());
}

TEST_CASE("the harness calls each kind of stage as the executor does") {
  const cv::Mat image(16, 16, CV_8UC3, cv::Scalar(10, 20, 30));

  SECTION("map: the per-sample stream of (seed, node, epoch, id, view); random stages train only") {
    testing::HarnessOptions o;
    o.node = "aug";
    o.seed = 7;
    testing::Harness h("{stage: augment, rotation: 40, horizontal_flip: true}", o);
    CHECK(h.schema().name == "augment");
    CHECK(h.params().number("rotation") == 40.0);
    auto direct = testing::make<MapStage>("{stage: augment, rotation: 40, horizontal_flip: true}");
    cv::Mat noisy(16, 16, CV_8UC3);
    cv::randu(noisy, 0, 255);
    for (int64_t id = 0; id < 4; ++id) {
      Sample s = testing::image_sample(noisy, id, /*epoch=*/2, Split::train, /*view=*/1);
      Sample expected = s;
      Rng rng = Rng::for_sample(7, "aug", 2, id, 1);
      direct->process(expected, rng);
      CHECK(cv::norm(h.process(s).image, expected.image, cv::NORM_INF) == 0);
    }
    Sample val = testing::image_sample(noisy, 0, 1, Split::validation);
    CHECK((h.process(val).image.data == noisy.data));  // passed through untouched
    CHECK_THROWS_WITH(h.process_batch({val}), "Harness::process_batch: stage 'augment' is a per-sample map stage");
  }

  SECTION("join: one sample per input edge, metadata from the first") {
    testing::Harness h("{stage: concat}");
    const float a[] = {1, 2}, b[] = {3};
    Sample out = h.join({testing::features_sample(Tensor::copy_of(a, {2}), 5, 3, Split::test, 1),
                         testing::features_sample(Tensor::copy_of(b, {1}), 5, 3, Split::test, 1)});
    CHECK(out.id == 5);
    CHECK(out.epoch == 3);
    CHECK(out.split == Split::test);
    CHECK(out.label == 1);
    REQUIRE(out.features.numel() == 3);
    CHECK(out.features.ptr()[2] == 3.0f);
  }

  SECTION("sink: begin_run, then whole epochs") {
    const fs::path dir = fs::temp_directory_path() / ("pipe_test_schema_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    testing::HarnessOptions o;
    o.node = "sheet";
    testing::Harness h("{stage: preview, count: 4, columns: 2, epochs: 1}", o);
    RunInfo run;
    run.out_dir = dir.string();
    h.begin_run(run);
    std::vector<Sample> samples;
    for (int64_t id = 0; id < 5; ++id) samples.push_back(testing::image_sample(image, id));
    CHECK(h.run_epoch(Split::train, 1, samples, 2).count == 5);
    CHECK(fs::exists(dir / "sheet-epoch1.png"));
    fs::remove_all(dir);
  }

  SECTION("validation errors are pipe validate's") {
    CHECK_THROWS_WITH(testing::Harness("{stage: augment, rotaton: 4}"),
                      Catch::Contains("unknown parameter 'rotaton' for stage 'augment' (did you mean 'rotation'?)"));
    CHECK_THROWS_WITH(testing::Harness("{stage: nosuch}"), "no stage named 'nosuch'");
  }
}
