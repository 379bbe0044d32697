// `pipe launch --nproc N -- run GRAPH ...`: N local processes of one distributed run, the way
// torchrun starts them: each gets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR (127.0.0.1) and
// MASTER_PORT (a free port unless given), and PIPE_THREADS = cores / N so that the ranks do
// not oversubscribe the machine. Every rank's output goes to the launcher's terminal.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

namespace pipeline {

struct LaunchOptions {
  int nproc = 2;
  int master_port = 0;  // 0: a free port of the loopback interface
  int timeout_s = 0;    // > 0: PIPE_DIST_TIMEOUT for every rank
  std::vector<std::string> args;  // pipe's arguments for every rank, e.g. {"run", "graphs/cached.yaml"}
};

// Starts the ranks (this executable, `exe`), waits for all of them and returns 0 when every
// rank succeeded, else the exit code of the first rank that failed (128 + signal when one
// was killed), after naming each failed rank on `err`.
int run_launch(const LaunchOptions& o, const std::string& exe, std::FILE* err);

// A TCP port of 127.0.0.1 that nothing listens on now (bound, read back, released).
int free_local_port();

}  // namespace pipeline
