// Runs across processes and machines (docs/distributed.md) on LibTorch's c10d: a TCPStore
// for rendezvous, small messages and barriers, and a Gloo process group for the all-reduces
// of data-parallel training. pipe does not invent a transport; it decides what each rank
// does:
//
//   extraction  every missing cache entry is filled up front, each rank running the pass on
//               the samples whose id % world == rank into a part entry of its own; a barrier,
//               then rank 0 merges the parts into the entry every rank reads.
//   passes      the epoch's (shuffled) order is cut into global batches of train.batch;
//               rank r takes rows [floor(r*g/W), floor((r+1)*g/W)) of each batch of g.
//   training    sinks all-reduce gradients each step, weighted by their rows, so that the
//               update is the one of the global batch (SupervisedSink).
//   metrics     sinks all-reduce their sums at the end of every pass: every rank reports
//               the global loss and accuracy, and early stopping decides the same everywhere.
//
// Failure is never a hang: every wait has a deadline (`timeout`, 300 s unless set), a rank
// that dies breaks the others' collectives at once, and the message names the rank(s)
// missing, found through per-rank heartbeats in the store.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pipe/stage.h"

namespace at {
class Tensor;
}

namespace pipeline {

// Where this process sits in a run, read from the environment a launcher sets.
struct DistEnv {
  int rank = 0, world = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher;  // "torchrun" (RANK/WORLD_SIZE), "slurm", "openmpi", or "" for one process
  bool distributed() const { return world > 1; }
};

// RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT (torchrun, `pipe launch`),
// else SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, else OMPI_COMM_WORLD_RANK / _SIZE /
// _LOCAL_RANK. MASTER_ADDR and MASTER_PORT apply to all three (Slurm and Open MPI users set
// them in the batch script). Throws naming the variable when a value is not a number or out
// of range. `get` is getenv, or a map in tests.
DistEnv read_dist_env(const std::function<const char*(const char*)>& get);

// Seconds every distributed wait may take: PIPE_DIST_TIMEOUT, else 300.
int dist_timeout_s(const std::function<const char*(const char*)>& get);

// The rows of each global batch that `rank` of `world` takes: for a pass of `n` samples in
// global batches of `batch`, the positions (into the pass's order) this rank feeds, and its
// steps. Pure, so that tests check the arithmetic without processes.
struct ShardPlan {
  std::vector<int64_t> positions;
  std::vector<StepShard> steps;  // one per global batch, local == 0 when this rank has no rows
  int local_batch = 0;           // rows of a full global batch on this rank
};
ShardPlan shard_batches(int64_t n, int batch, int rank, int world);

// A c10d group: one per process, connected at construction (rank 0 hosts the store).
class Group : public DataParallel {
 public:
  // Blocks until every rank has connected, or throws after `timeout_s` naming the ranks that
  // did not arrive.
  Group(const DistEnv& env, int timeout_s);
  ~Group() override;
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const override { return env_.rank; }
  int world() const override { return env_.world; }
  const std::vector<StepShard>& steps() const override { return steps_; }
  void set_steps(std::vector<StepShard> s) { steps_ = std::move(s); }
  void all_reduce_sum(float* data, std::size_t n, const std::string& what) override;
  void all_reduce_sum(double* data, std::size_t n, const std::string& what) override;

  // Every rank's `mine`, in rank order (through the store, under `what`).
  std::vector<std::string> all_gather(const std::string& what, const std::string& mine);
  // Rank 0's value on every rank (`value` is ignored elsewhere).
  std::string broadcast(const std::string& what, const std::string& value);
  void barrier(const std::string& what);
  // Tells the others why this rank stops (they name it in their message). Never throws.
  void report_failure(const std::string& why) noexcept;
  // The last collective step: rank 0, which hosts the store, waits until every rank is past
  // its last use of it.
  void finish();
  const DistEnv& env() const { return env_; }
  int timeout_s() const { return timeout_s_; }

 private:
  struct Impl;
  void all_reduce(const at::Tensor& t, const std::string& what);
  [[noreturn]] void lost(const std::string& what, const std::string& detail);
  DistEnv env_;
  int timeout_s_;
  std::vector<StepShard> steps_;
  std::unique_ptr<Impl> impl_;
};

// The part of a cache entry one rank writes: "<split>-part<r>of<W>".
std::string part_split_name(const std::string& split, int rank, int world);

}  // namespace pipeline
