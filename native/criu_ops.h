// libcriu check / dump / restore / version as promise-returning addon calls.
//
// Each call runs on its own thread with its own criu_opts and its own
// `criu swrk` process, so concurrent calls share nothing and a long dump never
// occupies libuv's small thread pool. We start `criu swrk` ourselves and hand
// libcriu the socket (criu_local_set_service_fd) rather than letting libcriu
// fork it (criu_local_set_service_binary), because libcriu's own spawn
//   - forks the whole multi-threaded node process from a worker thread,
//   - creates its socketpair without CLOEXEC, so a concurrent call's swrk can
//     inherit another call's socket and keep it open past that call's end,
//   - hides the swrk pid, so a hung call (a restore spinning forever, see
//     docs/DESIGN.md section 6) could never be killed.
// The CRIU binary is whatever the caller passes (criuBinary), found by JS.
#pragma once
#include <string>

namespace phaul {
namespace criu_ops {

enum class CgroupMode { kDefault, kOff, kIgnore, kNone, kProps, kSoft, kFull, kStrict };

// Options of one call, copied out of the JS object on the main thread.
struct CallOptions {
  std::string criuBinary;    // path (or name on PATH) of the criu binary
  std::string imagesDir;     // required for dump/restore; check/version use it as scratch
  std::string workDir;       // CRIU's cwd and log location; defaults to imagesDir
  std::string logFile;       // a bare file name inside workDir (CRIU refuses '/')
  int logLevel = -1;         // 0..4; -1 = CRIU's default
  int pid = 0;               // dump: root of the tree
  std::string parentImages;  // dump: --prev-images-dir, relative to imagesDir
  bool leaveRunning = false;
  bool leaveStopped = false;
  bool shellJob = false;
  bool tcpEstablished = false;
  bool tcpClose = false;
  bool extUnixSk = false;
  bool fileLocks = false;
  bool linkRemap = false;
  std::string networkLock;  // "", "iptables", "nftables", "skip"
  CgroupMode manageCgroups = CgroupMode::kDefault;
  std::string freezeCgroup;
  unsigned timeoutMs = 0;  // our watchdog: kill swrk (and its children) after this; 0 = none
};

}  // namespace criu_ops
}  // namespace phaul
