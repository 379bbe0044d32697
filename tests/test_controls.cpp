// Training controls: train.checkpoint (which epoch is best), train.early_stopping and
// train.lr_schedule, as bookkeeping (Controls) with hand-computed expectations, as graph
// syntax with its diagnostics, and in real runs of the shipped cached graph (the learning
// rate reaches the optimizer; a run stops when it should; `--resume --set train.epochs=N`
// extends a run to exactly what a longer run gives).
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "controls.h"
#include "run_support.h"

using namespace pipeline;
namespace fs = std::filesystem;

namespace {

SplitMetrics val(double loss, double acc) { return {loss, acc, 100}; }

TrainSpec with_schedule(LrSchedule s, int epochs = 10) {
  TrainSpec t;
  t.epochs = epochs;
  t.lr_schedule = s;
  return t;
}

GraphSpec parse(const std::string& train_block, Diagnostics& diag) {
  const std::string yaml = fmt::format(R"(data: {{source: fashion_mnist, per_class: [60, 40, 40]}}
nodes:
  decode:   {{stage: decode, size: [32, 32]}}
  features: {{stage: convbase, model: "builtin:small_vgg", weights: ../models/small_vgg_fmnist.pt}}
  memo:     {{stage: cache}}
  head:     {{stage: dense_head, hidden: 32, lr: 1.0e-3}}
edges: [decode -> features -> memo -> head]
train: {}
)", train_block);
  return parse_graph(yaml, std::string(PIPE_SOURCE_DIR) + "/graphs/controls.yaml", {}, Registry::global(), diag);
}

GraphSpec graph(const std::string& train_block) {
  Diagnostics diag("controls.yaml");
  GraphSpec g = parse(train_block, diag);
  if (!diag.ok()) FAIL(diag.str());
  return g;
}

RunResult run(const GraphSpec& g, const std::string& out = "", const std::string& resume = "") {
  RunConfig cfg;
  cfg.threads = 2;
  cfg.quiet = true;
  cfg.write_outputs = !out.empty() || !resume.empty();
  cfg.out_dir = out;
  cfg.resume_dir = resume;
  return run_graph(g, cfg);
}

std::vector<double> lrs(const RunResult& r) {
  std::vector<double> out;
  for (const EpochMetrics& e : r.epochs) out.push_back(e.lr);
  return out;
}

}  // namespace

TEST_CASE("Controls: schedules, plateau, early stopping and the best epoch, against hand-computed values") {
  SECTION("step: lr * gamma^floor((e - 1) / step_size)") {
    LrSchedule s;
    s.kind = LrSchedule::Kind::step;
    s.step_size = 3;
    s.gamma = 0.5;
    const Controls c(with_schedule(s), 0.01);
    CHECK(c.lr_for(1) == 0.01);
    CHECK(c.lr_for(3) == 0.01);
    CHECK(c.lr_for(4) == 0.005);
    CHECK(c.lr_for(7) == 0.0025);
  }
  SECTION("cosine: lr at the first epoch, min_lr at the last, the mean half way") {
    LrSchedule s;
    s.kind = LrSchedule::Kind::cosine;
    s.min_lr = 0.001;
    const Controls c(with_schedule(s, 5), 0.011);
    CHECK(c.lr_for(1) == Approx(0.011));
    CHECK(c.lr_for(3) == Approx(0.006));
    CHECK(c.lr_for(5) == Approx(0.001));
  }
  SECTION("plateau: lr * factor after `patience` epochs without a lower val_loss, never below min_lr") {
    LrSchedule s;
    s.kind = LrSchedule::Kind::plateau;
    s.patience = 2;
    s.factor = 0.1;
    s.min_lr = 0.0005;
    Controls c(with_schedule(s), 0.1);
    c.end_epoch(val(1.0, 0.5));  // best
    c.end_epoch(val(1.1, 0.5));  // wait 1
    CHECK(c.lr_for(3) == 0.1);
    c.end_epoch(val(1.0, 0.5));  // wait 2 (equal is no improvement): reduce
    CHECK(c.lr_for(4) == Approx(0.01));
    c.end_epoch(val(0.9, 0.5));  // improves
    c.end_epoch(val(0.95, 0.5));
    c.end_epoch(val(0.95, 0.5));  // reduce
    CHECK(c.lr_for(7) == Approx(0.001));
    c.end_epoch(val(0.95, 0.5));
    c.end_epoch(val(0.95, 0.5));  // reduce, clamped
    CHECK(c.lr_for(9) == Approx(0.0005));
  }
  SECTION("early stopping: min_delta and patience, monitor val_acc (mode auto: max)") {
    TrainSpec t;
    t.early_stopping = {true, {Monitor::val_acc, true}, 2, 0.01};
    Controls c(t, 0.1);
    CHECK_FALSE(c.end_epoch(val(1, 0.80)).stop);
    CHECK_FALSE(c.end_epoch(val(1, 0.805)).stop);  // +0.005 < min_delta: wait 1
    CHECK_FALSE(c.end_epoch(val(1, 0.82)).stop);   // +0.02: improves
    CHECK_FALSE(c.end_epoch(val(1, 0.80)).stop);
    CHECK(c.end_epoch(val(1, 0.81)).stop);  // second epoch without improvement
    CHECK(c.stopped());
    Controls copy(t, 0.1);
    copy.restore(c.state());
    CHECK(copy.stopped());
    copy.resume_training();
    CHECK_FALSE(copy.end_epoch(val(1, 0.80)).stop);
  }
  SECTION("the best epoch: strict improvements of the monitored metric (val_loss, min)") {
    TrainSpec t;
    t.best = {Monitor::val_loss, false};
    Controls c(t, -1);
    CHECK(c.end_epoch(val(0.5, 0.1)).best);
    CHECK_FALSE(c.end_epoch(val(0.5, 0.9)).best);
    CHECK(c.end_epoch(val(0.4, 0.2)).best);
    CHECK(c.lr_for(3) < 0);  // no learning rate to schedule
  }
}

TEST_CASE("train controls in graphs: resolved when set, each mistake a diagnostic at its place") {
  const GraphSpec g = graph("{epochs: 4, early_stopping: {patience: 2}, lr_schedule: {kind: step, step_size: 2}}");
  CHECK(g.train.early_stopping.enabled);
  CHECK(g.train.early_stopping.rule.metric == Monitor::val_loss);
  CHECK_FALSE(g.train.early_stopping.rule.maximize);
  CHECK(g.train.lr_schedule.kind == LrSchedule::Kind::step);
  CHECK(g.resolved["train"]["early_stopping"]["mode"].as<std::string>() == "min");
  CHECK(g.resolved["train"]["lr_schedule"]["gamma"].as<double>() == 0.1);
  CHECK_FALSE(graph("{epochs: 4}").resolved["train"]["lr_schedule"]);

  const auto problems = [](const std::string& block) {
    Diagnostics diag("controls.yaml");
    parse(block, diag);
    return diag.str();
  };
  CHECK_THAT(problems("{early_stopping: {patience: 0}}"),
             Catch::Contains("controls.yaml:8:36: error: parameter 'patience' in 'train.early_stopping' is 0, out of range"));
  CHECK_THAT(problems("{early_stopping: {monitor: accuracy}}"), Catch::Contains("val_loss") && Catch::Contains("val_acc"));
  CHECK_THAT(problems("{lr_schedule: {step_size: 3}}"),
             Catch::Contains("missing required parameter 'kind' in 'train.lr_schedule'"));
  CHECK_THAT(problems("{lr_schedule: {kind: exponential}}"), Catch::Contains("exponential"));
  CHECK_THAT(problems("{checkpoint: val_loss}"), Catch::Contains("controls.yaml:8:") &&
                                                      Catch::Contains("'train.checkpoint' must be a map, got a scalar"));
  CHECK_THAT(problems("{checkpoint: {monitor: val_loss, patience: 3}}"),
             Catch::Contains("unknown parameter 'patience' in 'train.checkpoint'"));
}

TEST_CASE("train controls in runs: the scheduled rate reaches the optimizer, early stopping stops, resume extends") {
  SECTION("lr 0 from epoch 2 on freezes the head: validation results repeat exactly") {
    const RunResult r = run(graph("{epochs: 4, batch: 20, lr_schedule: {kind: step, step_size: 1, gamma: 0}}"));
    CHECK(lrs(r) == std::vector<double>({1e-3, 0, 0, 0}));
    REQUIRE(r.epochs.size() == 4);
    for (size_t e = 1; e < 4; ++e) CHECK(r.epochs[e].validation.loss == r.epochs[0].validation.loss);
    // gamma 1 is no schedule at all, and there epoch 2 moves the weights
    const RunResult same = run(graph("{epochs: 2, lr_schedule: {kind: step, step_size: 1, gamma: 1}}"));
    const RunResult plain = run(graph("{epochs: 2}"));
    CHECK(test::sink_results(same) == test::sink_results(plain));
    CHECK(plain.epochs[1].validation.loss != plain.epochs[0].validation.loss);
  }

  SECTION("early stopping ends the run; the best epoch follows train.checkpoint") {
    const RunResult r = run(graph("{epochs: 8, early_stopping: {monitor: val_acc, patience: 2, min_delta: 0.5}}"));
    CHECK(r.epochs.size() == 3);  // epoch 1 sets the best; nothing beats it by 0.5 within 2 more
    CHECK(r.summary["stopped_early"] == true);
    const RunResult by_loss = run(graph("{epochs: 5, checkpoint: {monitor: val_loss}}"));
    size_t argmin = 0;
    for (size_t i = 1; i < by_loss.epochs.size(); ++i)
      if (by_loss.epochs[i].validation.loss < by_loss.epochs[argmin].validation.loss) argmin = i;
    CHECK(by_loss.best_epoch == static_cast<int>(argmin) + 1);
    CHECK(by_loss.best_val_acc == by_loss.epochs[argmin].validation.accuracy);
  }

  SECTION("--resume with more epochs gives what the longer run gives; other --set values are refused") {
    const fs::path dir = fs::temp_directory_path() / fmt::format("pipe-controls-{}", ::getpid());
    fs::remove_all(dir);
    const std::string block = "{epochs: EPOCHS, lr_schedule: {kind: step, step_size: 2, gamma: 0.5}}";
    const auto with_epochs = [&](int n) {
      std::string b = block;
      b.replace(b.find("EPOCHS"), 6, std::to_string(n));
      return graph(b);
    };
    run(with_epochs(2), (dir / "run").string());
    const RunResult extended = run(with_epochs(4), "", (dir / "run").string());
    const RunResult straight = run(with_epochs(4));
    CHECK(test::sink_results(extended) == test::sink_results(straight));
    CHECK(lrs(extended) == std::vector<double>({1e-3, 1e-3, 5e-4, 5e-4}));

    const std::string cmd = fmt::format("'{}/pipe' run --resume '{}' --set train.batch=10 2>&1", PIPE_BINARY_DIR,
                                        (dir / "run").string());
    FILE* f = popen(cmd.c_str(), "r");
    REQUIRE(f != nullptr);
    std::string out;
    char buf[4096];
    for (size_t n; (n = fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
    const int status = pclose(f);
    CHECK(WEXITSTATUS(status) == 2);
    CHECK_THAT(out, Catch::Contains("--set train.batch=10 refused: only train.epochs may change"));
    fs::remove_all(dir);
  }
}
