#include "launch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

extern char** environ;

namespace pipeline {

int free_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(fmt::format("socket: {}", std::strerror(errno)));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  const int e = errno;
  ::close(fd);
  if (!ok) throw std::runtime_error(fmt::format("cannot find a free port on 127.0.0.1: {}", std::strerror(e)));
  return ntohs(a.sin_port);
}

namespace {

// The environment of rank `rank`: ours, less the variables a launcher sets, plus its own.
std::vector<std::string> rank_env(const LaunchOptions& o, int rank, int port) {
  static const char* kOurs[] = {"RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "MASTER_ADDR=", "MASTER_PORT=", "PIPE_THREADS="};
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const bool ours = std::any_of(std::begin(kOurs), std::end(kOurs), [&](const char* k) { return kv.rfind(k, 0) == 0; });
    if (!ours && !(o.timeout_s > 0 && kv.rfind("PIPE_DIST_TIMEOUT=", 0) == 0)) env.push_back(kv);
  }
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  env.push_back(fmt::format("RANK={}", rank));
  env.push_back(fmt::format("WORLD_SIZE={}", o.nproc));
  env.push_back(fmt::format("LOCAL_RANK={}", rank));
  env.push_back("MASTER_ADDR=127.0.0.1");
  env.push_back(fmt::format("MASTER_PORT={}", port));
  env.push_back(fmt::format("PIPE_THREADS={}", std::max(1u, cores / static_cast<unsigned>(o.nproc))));
  if (o.timeout_s > 0) env.push_back(fmt::format("PIPE_DIST_TIMEOUT={}", o.timeout_s));
  return env;
}

pid_t start_rank(const std::string& exe, const LaunchOptions& o, int rank, int port) {
  // Everything exec needs is built before fork: the child only calls exec and _exit.
  std::vector<std::string> env = rank_env(o, rank, port);
  std::vector<char*> envp, argv{const_cast<char*>(exe.c_str())};
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  for (const std::string& a : o.args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execve(exe.c_str(), argv.data(), envp.data());
    _exit(127);
  }
  if (pid < 0) throw std::runtime_error(fmt::format("fork failed: {}", std::strerror(errno)));
  return pid;
}

// The ranks still running, for the SIGTERM handler (0: reaped, so that a reused pid is never
// signalled). Sized before the handler is installed; only elements change after.
static_assert(std::atomic<pid_t>::is_always_lock_free, "the SIGTERM handler reads it");
std::unique_ptr<std::atomic<pid_t>[]> g_ranks;
size_t g_nranks = 0;

// SIGTERM sent to the launcher alone (kill PID, a job scheduler's first warning) is passed to
// every rank, which stops after its current batch as on Ctrl-C; the launcher waits for them.
void forward_sigterm(int) {
  for (size_t r = 0; r < g_nranks; ++r)
    if (const pid_t pid = g_ranks[r].load(); pid > 0) ::kill(pid, SIGTERM);
}

}  // namespace

int run_launch(const LaunchOptions& o, const std::string& exe, std::FILE* err) {
  if (o.nproc < 1) throw std::runtime_error(fmt::format("--nproc must be at least 1, got {}", o.nproc));
  if (o.args.empty()) throw std::runtime_error("nothing to launch: give pipe's arguments after --, e.g. -- run GRAPH");
  const int port = o.master_port > 0 ? o.master_port : free_local_port();
  // Ctrl-C reaches every rank through the terminal's process group; the launcher waits for
  // them to stop rather than dying first.
  std::signal(SIGINT, SIG_IGN);
  std::vector<pid_t> pids;
  for (int r = 0; r < o.nproc; ++r) pids.push_back(start_rank(exe, o, r, port));
  g_ranks = std::make_unique<std::atomic<pid_t>[]>(pids.size());
  for (size_t r = 0; r < pids.size(); ++r) g_ranks[r] = pids[r];
  g_nranks = pids.size();
  std::signal(SIGTERM, forward_sigterm);
  int rc = 0;
  for (size_t left = pids.size(); left > 0;) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0 && errno == EINTR) continue;
    if (pid < 0) break;
    const auto it = std::find(pids.begin(), pids.end(), pid);
    if (it == pids.end()) continue;
    --left;
    const int rank = static_cast<int>(it - pids.begin());
    g_ranks[static_cast<size_t>(rank)] = 0;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code == 0) continue;
    if (WIFSIGNALED(status)) std::fprintf(err, "pipe launch: rank %d was killed by signal %d\n", rank, WTERMSIG(status));
    else std::fprintf(err, "pipe launch: rank %d exited with code %d\n", rank, code);
    if (rc == 0) rc = code;
  }
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  return rc;
}

}  // namespace pipeline
