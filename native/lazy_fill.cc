// The lazy-pages server's core (lazy_fill.h). One thread answers the restore's
// socket and every userfaultfd's messages: faults first, each with the
// 64 KiB around it (its own page first, which wakes the thread; the rest in
// 16 KiB pieces, left to the background as soon as another message waits);
// `threads` more copy everything else in large chunks, starting where the
// last fault was (its neighbourhood is likely next).
//
// The restore's socket (CRIU's criu/uffd.c): per task an int pid, then, when
// the pid is positive, the task's userfaultfd as SCM_RIGHTS on one dummy
// byte; a negative pid is a zombie (no memory). Once the restore is done, the
// u32 0x52535446; background copies only start then, when every task has
// registered its lazy ranges.
//
// Per userfaultfd ("mm"), the pages still to copy are a map of disjoint
// extents keyed by address (`pending`), and the background claims taken out
// of it are a second one (`flights`): a claim keeps the part it has not
// placed yet, and the part in the ioctl under way. A fault, a claim and every
// event cost O(log n) in the number of extents. So a fault never mistakes a
// claimed page for an empty one and never waits for a claim: a page still
// pending, or claimed but not in an ioctl yet, is taken and copied at once
// (out of the claim); a page in a background ioctl under way is left to that
// ioctl, whose UFFDIO_COPY wakes the faulting thread (and should the ioctl
// not place it, the worker hands the fault back to be answered again); only
// a page in neither is empty and gets the zero page.
//
// What still waits: reading the userfaultfd. A read may return an event, and
// reading an event completes it: the kernel lets the fork, mremap, munmap or
// madvise go on (mmap_changing drops), so a copy that enters the kernel after
// the read would land on the range the event changed (a page the workload
// just zapped with MADV_DONTNEED would get its old data back; a page mremap
// moved would be copied to the old address, its new one left empty). Copies
// that entered before cannot: the event's sender waits for them
// (map_changing_lock) and later ones fail with EAGAIN until the read. So an
// mm's "gate" is closed around each read: no new background ioctl starts,
// and the read waits for those under way (one slice, Options::slice_bytes).
// A batch with an event is handled with the gate still closed: the claims go
// back into `pending` first, so the map is exact when the event is applied
// (after a fork the child needs exactly the parent's missing pages, after
// MADV_DONTNEED no old copy may land on the zapped range). A batch of faults
// only opens the gate before it copies: the background goes on meanwhile.
//
// Keeping that wait short. While faults arrive (one in the last 10 ms: a
// "storm", the workload is waiting on us), a background ioctl places 32 KiB
// (~30 us of copying here) instead of Options::slice_bytes, and the workers
// run at nice 19 so that the faulting threads get the CPUs. The event thread
// runs SCHED_FIFO when allowed (CAP_SYS_NICE; otherwise nice -10 and none of
// what follows): a read that finds a worker's ioctl under way makes that
// worker SCHED_FIFO until the ioctl returns (preempted there, it would keep
// the read waiting for a scheduling slice: 10-40 ms seen under load), spins
// for it a moment before sleeping, and mu_ lends its waiter's priority to
// its holder (PTHREAD_PRIO_INHERIT). The kernel's real-time throttling still
// leaves other tasks their share. Measured (PHAUL_FAST_FILL_TRACE, under
// load): read waits p90 2.6 ms and max 16 ms before, p90 ~60 us after.
//
// Right after the resume (kResumeGraceUs from the restore's end) a storm is
// the workload's first accesses, and the pause it sees is that burst: the
// workers then place nothing at all while faults arrive, leaving both CPUs to
// the faulting threads and the event thread (perf sched at 1 GiB: with the
// workers at nice 19 the event thread and the faulting thread took turns on
// one CPU, ~0.1 ms each a fault, while the workers held the other). Quiet
// A/B, 1 GiB at 50 MB/s, ten turns: pause median 222 -> 177 ms, shorter in 8
// of 10; the fill ends ~0.3 s later. Past the grace, storms only slow them.
//
// The store is read (pread into the copying thread's own buffer), never
// mapped, and what is placed (or no longer needed: what no image lists, once
// the restore is done, Unneeded) is given back, punched out of the files, by
// a thread of its own at normal priority (Puncher: never the event thread,
// and not the workers, which run at nice 19 while faults arrive) once ~1 MiB
// is queued (kPunchBatch) or every 20 ms, adjacent ranges in one punch. A punch
// zaps every mapping of its range: when the server mapped the files (the
// copies' source), each punch flushed TLBs on the CPUs that ran us, 0.3-0.6
// ms a punch here (a PVM guest), so what faults placed (small scattered
// windows) waited for whole 2 MiB blocks and lingered in the store beside
// the workload (destination peak 1.13-1.20x). With nothing mapped, a 64 KiB
// punch costs 12-35 us (measured under load), what freeing its pages costs;
// a read costs a memcpy more than copying from a mapping, whose first touch
// of each page faulted instead.
//
// Postcopy (Options::control_fd): the files fill while the tree runs. A bitmap
// per file says which pages hold their data; claims take present pages only.
// A fault on a page not yet present is held (its thread sleeps in the kernel,
// never reads zeros), its neighbourhood is asked for on the control socket,
// and it is answered once the range is said present. Which source, in what
// order, is the caller's business: this file only says what it lacks.
#include "lazy_fill.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "uapi_compat.h"

namespace phaul {
namespace lazyfill {

static const uint64_t kPage = 4096;
static const uint32_t kRestoreFinished = 0x52535446;
// Placed store ranges are given back (punched) once this much is queued, or
// this long after the last time.
static const uint64_t kPunchBatch = 1 << 20;
static const int64_t kPunchIdleUs = 20000;
// While faults are arriving (the last one less than kStormUs ago), a
// background copy places at most kStormSlice at a time: a read waits for the
// one under way. Otherwise Options::slice_bytes (fewer, larger ioctls fill faster).
static const int64_t kStormUs = 10000;
static const uint64_t kStormSlice = 32 << 10;
// A fault's window beyond its own page is placed this much at a time, and
// left to the background as soon as the userfaultfd has another message.
static const uint64_t kWindowPiece = 16 << 10;
// The event thread's real-time priority (when allowed), and a worker's while a read waits for its ioctl.
static const int kReaderRtPrio = 2, kBoostRtPrio = 1;
static const int64_t kGateSpinUs = 200;  // how long a read spins for the background ioctls under way
// While faults arrive the workload waits on us: background workers then run
// at the lowest priority, so that the faulting threads get the CPUs (a read
// that waits for a worker's ioctl lifts it meanwhile, CloseGate).
static const int kStormNice = 19;
static const int64_t kResumeGraceUs = 300000;

static int64_t NowUs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

// The calling thread at normal priority (SCHED_OTHER, nice 0).
static void NormalPriority() {
  struct sched_param sp = {};
  sched_setscheduler(0, SCHED_OTHER, &sp);
  setpriority(PRIO_PROCESS, pid_t(syscall(SYS_gettid)), 0);
}

// The calling thread as the event thread runs: nice -10, and real-time above
// that when allowed (CAP_SYS_NICE). Whether it is real-time.
static bool ReaderPriority() {
  setpriority(PRIO_PROCESS, pid_t(syscall(SYS_gettid)), -10);
  struct sched_param sp = {};
  sp.sched_priority = kReaderRtPrio;
  return sched_setscheduler(0, SCHED_FIFO, &sp) == 0;
}

static inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

static std::string Errno(const std::string& what, int e) { return what + ": " + strerror(e); }

static std::string Hex(uint64_t v) {
  char b[24];
  snprintf(b, sizeof(b), "0x%llx", (unsigned long long)v);
  return b;
}

int Listen(const std::string& path, std::string* err) {
  struct sockaddr_un sa = {};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof(sa.sun_path)) {
    *err = "lazy-pages socket path too long: " + path;
    return -1;
  }
  memcpy(sa.sun_path, path.c_str(), path.size());
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = Errno("socket", errno);
    return -1;
  }
  unlink(path.c_str());
  if (bind(fd, (struct sockaddr*)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0) {
    *err = Errno("lazy-pages socket " + path, errno);
    close(fd);
    return -1;
  }
  return fd;
}

struct Src {
  int fd = -1;
  uint64_t size = 0;
};

struct Piece {
  uint64_t end;
  uint32_t file;
  uint64_t off;
};

// A mutex that lends its waiter's priority to its holder (the event thread
// runs real-time when allowed: a worker preempted while holding the lock
// would otherwise keep it, and the faults behind it, waiting for a
// scheduling slice).
class PiMutex {
 public:
  PiMutex() {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setprotocol(&a, PTHREAD_PRIO_INHERIT);
    pthread_mutex_init(&m_, &a);
    pthread_mutexattr_destroy(&a);
  }
  ~PiMutex() { pthread_mutex_destroy(&m_); }
  PiMutex(const PiMutex&) = delete;
  PiMutex& operator=(const PiMutex&) = delete;
  void lock() { pthread_mutex_lock(&m_); }
  void unlock() { pthread_mutex_unlock(&m_); }

 private:
  pthread_mutex_t m_;
};

// Shared by an mm and the children it forked: they need the same file pages,
// so those may be given back only while a single mm is left.
struct Family {
  int members = 1;
};

// A fault read from a userfaultfd: the address and when its message was seen.
struct Fault {
  uint64_t addr;
  int64_t seen;
};

// A background claim, owned by the worker placing it and listed in
// Mm::flights under its first address while some of it is unplaced or in an
// ioctl (once it is neither, it leaves the list at once, so that no other
// claim can find its key taken). [next, end) is not placed yet; [next, busy)
// is in a UFFDIO_COPY under way (none when busy == next). The data of
// address a is at `off + (a - key)` of `file`.
struct Flight {
  uint64_t key, next, busy, end;
  uint32_t file;
  uint64_t off;
  bool listed;
  std::vector<Fault> waiters;  // faults on [next, busy): the ioctl's wake answers them
  pid_t tid;                   // the worker's thread
  bool boosted;                // a read waits for its ioctl: it runs real-time until the ioctl returns
};

struct Mm {
  int uffd = -1;
  int32_t id = 0;
  std::map<uint64_t, Piece> pending;    // start -> piece
  std::map<uint64_t, Flight*> flights;  // background claims (disjoint from pending)
  uint64_t cursor = 0;                  // background copies continue from here
  std::atomic<int> busy{0};             // background ioctls under way (changed with mu_ held)
  std::atomic<bool> gate{false};        // closed: the event thread reads; no background ioctl starts
  bool dead = false;
  int64_t retry_at = 0;  // after EAGAIN: an event is pending, leave it to the event thread a moment
  std::shared_ptr<Family> family;
};

// Outcome of placing [dst, dst + len).
enum class Put { kDone, kAgain, kGone, kFatal };

class Server {
 public:
  Server(const Options& o, Stats* st) : o_(o), st_(st) {}
  ~Server();
  bool Run(std::string* err);

 private:
  bool Setup(std::string* err);
  bool ReadControl();
  void AddMm(int uffd, int32_t id, const std::vector<Extent>* ext, std::shared_ptr<Family> fam,
             const std::map<uint64_t, Piece>* copy);
  void HandleMm(Mm* mm);
  void HandleFault(Mm* mm, uint64_t addr, int64_t seen, std::vector<std::pair<uint64_t, int64_t>>* again);
  enum class Where { kTaken, kJoined, kHeld, kEmpty };
  Where Locate(Mm* mm, const Fault& f, uint64_t* s, uint64_t* e, Piece* pc, ControlRecord* need);
  void Answered(int64_t seen, int64_t at, uint32_t kind, uint64_t bytes = 0, uint32_t copy_us = 0,
                uint32_t tail_us = 0);
  bool Tracing(int64_t t) const { return o_.trace && t_fin_ && t - t_fin_ < kTraceUs; }
  void Recall(Mm* mm);
  void Worker();
  void Fly(Mm* mm, Flight* c);
  void Unlist(Mm* mm, Flight* c);
  bool Claim(Mm* mm, uint64_t at, uint64_t max, uint64_t* s, uint64_t* e, Piece* pc);
  void Release(Mm* mm, uint64_t s, uint64_t e, const Piece& pc);
  void Drop(Mm* mm, uint64_t s, uint64_t e, bool count);
  Put Place(Mm* mm, uint64_t s, uint64_t e, const Piece& pc, bool fault, uint64_t* done);
  const uint8_t* Read(uint32_t file, uint64_t off, uint64_t len);
  void Gone(Mm* mm);
  void PunchAll(std::vector<Piece> punch);
  void Placed(uint32_t file, uint64_t off, uint64_t len);
  void Unneeded();
  void Puncher();
  void Fatal(const std::string& why);
  bool Complete();
  void Wake();
  bool Take(Mm* mm, std::map<uint64_t, Piece>::iterator it, uint64_t from, uint64_t to, uint64_t* s, uint64_t* e,
            Piece* pc);
  bool ClaimPresent(Mm* mm, uint64_t at, uint64_t max, uint64_t* s, uint64_t* e, Piece* pc);
  int64_t CloseGate(Mm* mm);
  void OpenGate(Mm* mm);
  // Postcopy.
  bool ReadPresence();
  void ServeWaiters();
  void AnswerHandedBack();
  uint64_t MissingPages();
  void Need(uint32_t file, uint64_t off, uint64_t len);
  bool IsPresent(uint32_t file, uint64_t off) const;
  uint64_t FirstPresent(uint32_t file, uint64_t from, uint64_t to) const;
  uint64_t PresentEnd(uint32_t file, uint64_t from, uint64_t to) const;

  const Options& o_;
  Stats* st_;
  std::vector<Src> src_;
  std::map<int32_t, const std::vector<Extent>*> by_id_;
  std::vector<std::unique_ptr<Mm>> mms_;
  std::map<int, Mm*> by_fd_;
  int ep_ = -1, ctl_ = -1, wake_ = -1, listen_ = -1;
  std::string ctl_buf_;
  std::vector<int> ctl_fds_;
  bool finished_ = false;
  int64_t t_accept_ = 0;
  std::atomic<int64_t> t_fin_{0};  // the restore's end (the workers read it: kResumeGraceUs)

  PiMutex mu_;
  std::condition_variable_any work_cv_, gate_cv_, punch_cv_;
  bool stop_ = false;
  std::string fatal_;
  size_t rr_ = 0;
  // Store ranges placed (or no longer needed) and not given back yet (end =
  // length), and their bytes (mu_): Puncher gives them back.
  std::vector<Piece> to_punch_;
  uint64_t to_punch_bytes_ = 0;
  std::atomic<uint64_t> copied_{0}, punched_{0}, copies_{0}, retries_{0}, dropped_{0};
  std::atomic<int64_t> last_fault_{0};  // when a read last returned a fault
  bool boost_ = false;                  // the event thread runs real-time, so may lift a worker it waits for (mu_)
  bool reader_rt_ = false;              // the event thread runs real-time (SCHED_FIFO)

  // Postcopy (control_fd >= 0): per file, a bit per page that holds its data (mu_).
  bool await_ = false;
  int control_ = -1;
  std::vector<std::vector<uint64_t>> present_;
  std::string control_in_;
  struct Waiter {
    Mm* mm;
    uint64_t addr;
    int64_t seen;
  };
  std::vector<Waiter> waiting_;                    // faults held for their data (event thread)
  std::vector<Waiter> handed_back_;                // faults a background ioctl joined but did not place (mu_)
  PiMutex stat_mu_;                                // st_->faults and fault_us: every thread answers faults
  std::set<std::pair<uint32_t, uint64_t>> asked_;  // (file, off) windows already asked for (event thread)
};

Server::~Server() {
  // After a failure the userfaultfds stay open (the process keeps them until
  // it exits): the tree's faults then wait instead of reading zeros.
  for (auto& m : mms_)
    if (m->uffd >= 0 && fatal_.empty()) close(m->uffd);
  for (int fd : ctl_fds_) close(fd);
  for (auto& s : src_)
    if (s.fd >= 0) close(s.fd);
  for (int fd : {ep_, ctl_, wake_, listen_, control_})
    if (fd >= 0) close(fd);
}

bool Server::Setup(std::string* err) {
  listen_ = o_.listen_fd;
  for (const auto& f : o_.files) {
    Src s;
    s.fd = open(f.c_str(), O_RDWR | O_CLOEXEC);
    if (s.fd < 0) s.fd = open(f.c_str(), O_RDONLY | O_CLOEXEC);  // no punching then
    if (s.fd < 0) {
      *err = Errno("page file " + f, errno);
      return false;
    }
    struct stat sb;
    if (fstat(s.fd, &sb) < 0) {
      *err = Errno("page file " + f, errno);
      return false;
    }
    s.size = uint64_t(sb.st_size);
    src_.push_back(s);
  }
  for (const auto& im : o_.images) {
    uint64_t prev = 0;
    for (const auto& e : im.extents) {
      if (e.start >= e.end || (e.start | e.end | e.off) & (kPage - 1) || e.start < prev || e.file >= src_.size() ||
          e.off + (e.end - e.start) > src_[e.file].size) {
        *err = "lazy-pages: extent at " + Hex(e.start) + " of image " + std::to_string(im.id) +
               " is out of order or outside its page file";
        return false;
      }
      prev = e.end;
      st_->pages += (e.end - e.start) / kPage;
    }
    by_id_[im.id] = &im.extents;
  }
  ep_ = epoll_create1(EPOLL_CLOEXEC);
  wake_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (ep_ < 0 || wake_ < 0) {
    *err = Errno("epoll", errno);
    return false;
  }
  struct epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.fd = listen_;
  epoll_ctl(ep_, EPOLL_CTL_ADD, listen_, &ev);
  ev.data.fd = wake_;
  epoll_ctl(ep_, EPOLL_CTL_ADD, wake_, &ev);
  if (o_.control_fd >= 0) {
    await_ = true;
    control_ = o_.control_fd;
    for (const auto& f : src_) present_.emplace_back((f.size / kPage + 63) / 64, 0);
    ev.data.fd = control_;
    epoll_ctl(ep_, EPOLL_CTL_ADD, control_, &ev);
  }
  return true;
}

// Postcopy: the present bits (mu_ held). Offsets are page-aligned and inside the file.
bool Server::IsPresent(uint32_t file, uint64_t off) const {
  if (!await_) return true;
  uint64_t pg = off / kPage;
  return (present_[file][pg / 64] >> (pg % 64)) & 1;
}

// The first present page's offset in [from, to), or to.
uint64_t Server::FirstPresent(uint32_t file, uint64_t from, uint64_t to) const {
  if (!await_) return from;
  const std::vector<uint64_t>& b = present_[file];
  for (uint64_t pg = from / kPage, end = to / kPage; pg < end;) {
    uint64_t w = b[pg / 64] >> (pg % 64);
    if (w) return std::min(to, (pg + uint64_t(__builtin_ctzll(w))) * kPage);
    pg = (pg / 64 + 1) * 64;
  }
  return to;
}

// The first absent page's offset in [from, to), or to.
uint64_t Server::PresentEnd(uint32_t file, uint64_t from, uint64_t to) const {
  if (!await_) return to;
  const std::vector<uint64_t>& b = present_[file];
  for (uint64_t pg = from / kPage, end = to / kPage; pg < end;) {
    uint64_t w = ~b[pg / 64] >> (pg % 64);
    if (w) return std::min(to, (pg + uint64_t(__builtin_ctzll(w))) * kPage);
    pg = (pg / 64 + 1) * 64;
  }
  return to;
}

// Reads kPresent records; false once the control socket ended.
bool Server::ReadPresence() {
  bool open = true;
  for (;;) {
    char buf[64 * sizeof(ControlRecord)];
    ssize_t n = recv(control_, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n <= 0) {
      open = false;
      break;
    }
    control_in_.append(buf, size_t(n));
  }
  size_t used = 0;
  {
    std::lock_guard<PiMutex> g(mu_);
    for (; control_in_.size() - used >= sizeof(ControlRecord); used += sizeof(ControlRecord)) {
      ControlRecord r;
      memcpy(&r, control_in_.data() + used, sizeof(r));
      if (r.kind != kPresent || r.file >= src_.size() || (r.off | r.len) & (kPage - 1) || r.off > src_[r.file].size ||
          r.len > src_[r.file].size - r.off) {
        control_in_.clear();
        used = 0;
        mu_.unlock();
        Fatal("lazy-pages: a bad record on the control socket");
        mu_.lock();
        return false;
      }
      std::vector<uint64_t>& b = present_[r.file];
      for (uint64_t pg = r.off / kPage, end = (r.off + r.len) / kPage; pg < end; pg++) b[pg / 64] |= 1ull << (pg % 64);
      st_->present_bytes += r.len;
    }
  }
  control_in_.erase(0, used);
  work_cv_.notify_all();
  return open;
}

// Pending pages whose data has not arrived (postcopy).
uint64_t Server::MissingPages() {
  std::lock_guard<PiMutex> g(mu_);
  uint64_t n = 0;
  for (auto& m : mms_) {
    if (m->dead) continue;
    for (auto& [a, p] : m->pending)
      for (uint64_t off = p.off, end = p.off + (p.end - a); off < end;) {
        uint64_t f = FirstPresent(p.file, off, end);
        n += (f - off) / kPage;
        off = f < end ? PresentEnd(p.file, f, end) : end;
      }
  }
  return n;
}

// Asks for a file range (once per window).
void Server::Need(uint32_t file, uint64_t off, uint64_t len) {
  if (!asked_.insert({file, off}).second) return;
  ControlRecord r = {kNeed, file, off, len};
  if (send(control_, &r, sizeof(r), MSG_NOSIGNAL) != ssize_t(sizeof(r))) return;
  st_->needs++;
  if (!finished_) st_->restore_needs++;
}

// Answers the faults a background ioctl joined but stopped short of (its
// claim's rest is back in `pending`, or an event took the page).
void Server::AnswerHandedBack() {
  std::vector<Waiter> back;
  {
    std::lock_guard<PiMutex> g(mu_);
    back.swap(handed_back_);
  }
  for (const Waiter& w : back) {
    if (w.mm->dead || stop_) continue;
    std::vector<std::pair<uint64_t, int64_t>> again;
    HandleFault(w.mm, w.addr, w.seen, &again);
    std::lock_guard<PiMutex> g(mu_);  // an event is under way: again once its message is read
    for (auto& a : again) handed_back_.push_back({w.mm, a.first, a.second});
  }
}

// Answers the held faults whose pages have arrived since.
void Server::ServeWaiters() {
  std::vector<Waiter> ready, still;
  {
    std::lock_guard<PiMutex> g(mu_);
    for (const Waiter& w : waiting_) {
      if (w.mm->dead) continue;
      uint64_t page = w.addr & ~(kPage - 1);
      auto it = w.mm->pending.upper_bound(page);
      bool wait = false;
      if (it != w.mm->pending.begin()) {
        auto p = std::prev(it);
        wait = p->second.end > page && !IsPresent(p->second.file, p->second.off + (page - p->first));
      }
      (wait ? still : ready).push_back(w);
    }
  }
  waiting_.swap(still);
  std::stable_sort(ready.begin(), ready.end(), [](const Waiter& a, const Waiter& b) { return a.mm < b.mm; });
  for (size_t i = 0; i < ready.size();) {
    Mm* mm = ready[i].mm;
    // No gate: no read here, and a fault needs none (the comment at the top).
    std::vector<std::pair<uint64_t, int64_t>> again;
    for (; i < ready.size() && ready[i].mm == mm; i++)
      if (!mm->dead && !stop_) HandleFault(mm, ready[i].addr, ready[i].seen, &again);
    // An address-space change is under way: its event comes through HandleMm; try again at the next turn.
    for (auto& a : again) waiting_.push_back({mm, a.first, a.second});
  }
}

void Server::AddMm(int uffd, int32_t id, const std::vector<Extent>* ext, std::shared_ptr<Family> fam,
                   const std::map<uint64_t, Piece>* copy) {
  auto m = std::make_unique<Mm>();
  m->uffd = uffd;
  m->id = id;
  m->family = fam ? fam : std::make_shared<Family>();
  if (ext)
    for (const auto& e : *ext) m->pending.emplace_hint(m->pending.end(), e.start, Piece{e.end, e.file, e.off});
  if (copy) m->pending = *copy;
  int fl = fcntl(uffd, F_GETFL);
  fcntl(uffd, F_SETFL, fl | O_NONBLOCK);
  struct epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.fd = uffd;
  epoll_ctl(ep_, EPOLL_CTL_ADD, uffd, &ev);
  std::lock_guard<PiMutex> g(mu_);
  by_fd_[uffd] = m.get();
  mms_.push_back(std::move(m));
}

// Reads what the restore sent; false when the socket closed. What came
// before the close is taken all the same: the restore's last message
// ("finished") and its close can be read in one go (seen under load, when
// the server then failed a restore that had finished).
bool Server::ReadControl() {
  bool open = true;
  for (;;) {
    char data[256];
    union {
      char buf[CMSG_SPACE(sizeof(int) * 64)];
      struct cmsghdr align;
    } cm;
    struct iovec iov = {data, sizeof(data)};
    struct msghdr mh = {};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cm.buf;
    mh.msg_controllen = sizeof(cm.buf);
    ssize_t n = recvmsg(ctl_, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
    if (n <= 0) {
      open = false;
      break;
    }
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < k; i++) {
        int fd;
        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        ctl_fds_.push_back(fd);
      }
    }
    ctl_buf_.append(data, size_t(n));
  }
  // pid (int32), then a dummy byte carrying the fd when pid > 0; or "finished".
  for (;;) {
    if (ctl_buf_.size() < 4) break;
    int32_t pid;
    memcpy(&pid, ctl_buf_.data(), 4);
    if (uint32_t(pid) == kRestoreFinished) {
      ctl_buf_.erase(0, 4);
      finished_ = true;
      st_->restored = true;
      t_fin_ = NowUs();
      st_->restore_ms = (t_fin_ - t_accept_) / 1000;
      continue;
    }
    if (pid <= 0) {
      ctl_buf_.erase(0, 4);
      st_->zombies++;
      continue;
    }
    if (ctl_buf_.size() < 5 || ctl_fds_.empty()) break;
    ctl_buf_.erase(0, 5);
    int fd = ctl_fds_.front();
    ctl_fds_.erase(ctl_fds_.begin());
    auto it = by_id_.find(pid);
    AddMm(fd, pid, it == by_id_.end() ? nullptr : it->second, nullptr, nullptr);
    st_->tasks++;
  }
  return open;
}

// Takes up to `max` bytes of pending pages out of the map, from `at` on
// (wrapping around); mu_ held.
bool Server::Claim(Mm* mm, uint64_t at, uint64_t max, uint64_t* s, uint64_t* e, Piece* pc) {
  if (mm->pending.empty()) return false;
  auto it = mm->pending.upper_bound(at);
  if (it != mm->pending.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end > at) it = prev;
  }
  if (it == mm->pending.end()) it = mm->pending.begin();
  uint64_t start = it->first;
  uint64_t from = at >= start && at < it->second.end ? at : start;
  return Take(mm, it, from, std::min(it->second.end, from + max), s, e, pc);
}

// Takes [from, to) out of the piece at `it`; mu_ held.
bool Server::Take(Mm* mm, std::map<uint64_t, Piece>::iterator it, uint64_t from, uint64_t to, uint64_t* s, uint64_t* e,
                  Piece* pc) {
  uint64_t start = it->first;
  Piece p = it->second;
  mm->pending.erase(it);
  if (from > start) mm->pending.emplace(start, Piece{from, p.file, p.off});
  if (to < p.end) mm->pending.emplace(to, Piece{p.end, p.file, p.off + (to - start)});
  *s = from;
  *e = to;
  *pc = Piece{to, p.file, p.off + (from - start)};
  return true;
}

// Postcopy's Claim: up to `max` bytes of pending pages whose data has
// arrived, the first such run from `at` on (wrapping around); mu_ held.
bool Server::ClaimPresent(Mm* mm, uint64_t at, uint64_t max, uint64_t* s, uint64_t* e, Piece* pc) {
  if (mm->pending.empty()) return false;
  auto it = mm->pending.upper_bound(at);
  if (it != mm->pending.begin() && std::prev(it)->second.end > at) it = std::prev(it);
  if (it == mm->pending.end()) it = mm->pending.begin();
  // Every piece once, the first one's part before `at` last.
  for (size_t n = 0, pieces = mm->pending.size(); n <= pieces; n++) {
    uint64_t a = it->first;
    const Piece& p = it->second;
    uint64_t from = n == 0 && at > a && at < p.end ? at : a;
    uint64_t fend = p.off + (p.end - a);
    uint64_t f = FirstPresent(p.file, p.off + (from - a), fend);
    if (f < fend) {
      uint64_t x = a + (f - p.off);
      uint64_t lim = std::min(p.end, x + max);
      uint64_t y = a + (PresentEnd(p.file, f, p.off + (lim - a)) - p.off);
      return Take(mm, it, x, y, s, e, pc);
    }
    if (++it == mm->pending.end()) it = mm->pending.begin();
  }
  return false;
}

// Puts [s, e) (data from pc) back into the map; mu_ held.
void Server::Release(Mm* mm, uint64_t s, uint64_t e, const Piece& pc) {
  if (s < e && !mm->dead) mm->pending.emplace(s, Piece{e, pc.file, pc.off});
}

// Forgets pending pages in [s, e); mu_ held.
void Server::Drop(Mm* mm, uint64_t s, uint64_t e, bool count) {
  auto it = mm->pending.upper_bound(s);
  if (it != mm->pending.begin()) --it;
  while (it != mm->pending.end() && it->first < e) {
    uint64_t a = it->first;
    Piece p = it->second;
    if (p.end <= s) {
      ++it;
      continue;
    }
    it = mm->pending.erase(it);
    if (a < s) mm->pending.emplace(a, Piece{s, p.file, p.off});
    if (p.end > e) it = mm->pending.emplace(e, Piece{p.end, p.file, p.off + (e - a)}).first;
    if (count) {
      uint64_t from = std::max(a, s), to = std::min(p.end, e);
      dropped_ += (to - from) / kPage;
      if (o_.punch && mm->family->members == 1) Placed(p.file, p.off + (from - a), to - from);
    }
  }
}

void Server::Gone(Mm* mm) {
  std::lock_guard<PiMutex> g(mu_);
  if (mm->dead) return;
  mm->dead = true;
  mm->pending.clear();
  mm->family->members--;
  st_->exits++;
}

void Server::Fatal(const std::string& why) {
  std::lock_guard<PiMutex> g(mu_);
  if (fatal_.empty()) fatal_ = why;
  stop_ = true;
  work_cv_.notify_all();
  gate_cv_.notify_all();
  punch_cv_.notify_all();
  Wake();
}

void Server::Wake() {
  uint64_t one = 1;
  if (write(wake_, &one, sizeof(one)) < 0) { /* already signalled */
  }
}

// Copies [s, e) from its file into the mm. *done: bytes placed (or skipped
// because already there) from s. Splits a range the kernel refuses as a whole
// (ENOENT: it spans VMAs, e.g. after an mprotect) until each part lies in one
// VMA; a single page without a VMA was unmapped: nothing to place. The copy
// wakes every thread waiting on a page it placed.
Put Server::Place(Mm* mm, uint64_t s, uint64_t e, const Piece& pc, bool fault, uint64_t* done) {
  *done = 0;
  const uint8_t* buf = Read(pc.file, pc.off, e - s);
  if (!buf) return Put::kFatal;
  uint64_t at = s;
  while (at < e) {
    uint64_t len = e - at;
    const uint8_t* from = buf + (at - s);
    struct uffdio_copy c = {};
    c.dst = at;
    c.src = uint64_t(uintptr_t(from));
    c.len = len;
    c.mode = 0;
    copies_++;
    int rc = ioctl(mm->uffd, UFFDIO_COPY, &c);
    int err = rc < 0 ? errno : 0;
    uint64_t n = c.copy > 0 ? uint64_t(c.copy) : 0;
    if (rc == 0) n = len;
    if (n) {
      copied_ += n / kPage;
      if (fault) st_->fault_pages += n / kPage;
      at += n;
      *done = at - s;
    }
    if (rc == 0 || at >= e) continue;
    if ((err == EAGAIN || err == EINTR) && n) continue;  // a partial copy: the rest says why
    if (err == EAGAIN || err == EINTR) {
      retries_++;
      return Put::kAgain;
    }
    if (err == ESRCH || err == ENOSPC) return Put::kGone;
    if (err == EEXIST) {  // already there (placed some other way): skip it
      at += kPage;
      *done = at - s;
      continue;
    }
    if (err == ENOENT) {
      if (e - at == kPage) {
        dropped_++;
        at += kPage;
        *done = at - s;
        continue;
      }
      // (Each half reads its pages again: the calling thread has one buffer.)
      uint64_t mid = at + ((e - at) / kPage / 2) * kPage;
      uint64_t d1 = 0, d2 = 0;
      Put r = Place(mm, at, mid, Piece{mid, pc.file, pc.off + (at - s)}, fault, &d1);
      *done = (at - s) + d1;
      if (r != Put::kDone) return r;
      r = Place(mm, mid, e, Piece{e, pc.file, pc.off + (mid - s)}, fault, &d2);
      *done = (mid - s) + d2;
      return r;
    }
    Fatal(Errno("UFFDIO_COPY at " + Hex(at) + " of image " + std::to_string(mm->id), err));
    return Put::kFatal;
  }
  return Put::kDone;
}

// The calling thread's copy buffer, grown to `len` (page-aligned, touched
// so that UFFDIO_COPY never faults on it). Threads copy from their own.
static uint8_t* CopyBuffer(uint64_t len) {
  struct Buffer {
    uint8_t* p = nullptr;
    uint64_t size = 0;
    ~Buffer() {
      if (p) munmap(p, size);
    }
  };
  thread_local Buffer b;
  if (b.size < len) {
    if (b.p) munmap(b.p, b.size);
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      b = Buffer();
      return nullptr;
    }
    memset(p, 0, len);
    b.p = static_cast<uint8_t*>(p);
    b.size = len;
  }
  return b.p;
}

// File bytes [off, off + len) in the calling thread's buffer (read, not
// mapped: the comment at the top says why), or null after Fatal.
const uint8_t* Server::Read(uint32_t file, uint64_t off, uint64_t len) {
  uint8_t* buf = CopyBuffer(len);
  if (!buf) {
    Fatal(Errno("lazy-pages: copy buffer", ENOMEM));
    return nullptr;
  }
  for (uint64_t got = 0; got < len;) {
    ssize_t n = pread(src_[file].fd, buf + got, len - got, off_t(off + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Fatal(n < 0 ? Errno("read page file " + o_.files[file], errno)
                  : "page file " + o_.files[file] + " ends before its pages");
      return nullptr;
    }
    got += uint64_t(n);
  }
  return buf;
}

// A fault's thread runs again (its page is in place): counted with the time since its message.
void Server::Answered(int64_t seen, int64_t at, uint32_t kind, uint64_t bytes, uint32_t copy_us, uint32_t tail_us) {
  uint32_t us = uint32_t(std::min<int64_t>(at - seen, UINT32_MAX));
  std::lock_guard<PiMutex> g(stat_mu_);
  st_->faults++;
  st_->fault_us.push_back(us);
  if (Tracing(seen)) st_->trace_faults.push_back({seen - t_fin_, us, kind, bytes, copy_us, tail_us});
}

// Where the page of a fault is (mu_ held): taken out of `pending` or out of a
// background claim not yet at it (*s, *e, *pc: the fault's window to copy),
// in a background ioctl under way (kJoined: the fault waits for its wake),
// held for its data (postcopy: *need says what to ask for), or in neither
// (kEmpty: nothing the images hold, or a page placed since).
Server::Where Server::Locate(Mm* mm, const Fault& f, uint64_t* s, uint64_t* e, Piece* pc, ControlRecord* need) {
  uint64_t page = f.addr & ~(kPage - 1);
  uint64_t base = page & ~(o_.fault_bytes - 1);
  auto it = mm->pending.upper_bound(page);
  if (it != mm->pending.begin() && std::prev(it)->second.end > page) {
    // The pages around the fault, within the piece holding it.
    auto p = std::prev(it);
    uint64_t from = std::max(p->first, base);
    uint64_t to = std::min(p->second.end, from + o_.fault_bytes);
    const Piece q = p->second;
    auto off = [&](uint64_t at) { return q.off + (at - p->first); };
    if (!IsPresent(q.file, off(page))) {
      // Postcopy: its data has not arrived. The faulting thread sleeps in
      // the kernel until the page is copied; its neighbourhood is asked for.
      *need = {kNeed, q.file, off(from), to - from};
      return Where::kHeld;
    }
    // The present run around the page (the whole window but in postcopy).
    uint64_t lo = page;
    while (lo > from && IsPresent(q.file, off(lo - kPage))) lo -= kPage;
    uint64_t hi = p->first + (PresentEnd(q.file, off(page), off(to)) - q.off);
    Take(mm, p, lo, hi, s, e, pc);
    return Where::kTaken;
  }
  auto fl = mm->flights.upper_bound(page);
  if (fl == mm->flights.begin()) return Where::kEmpty;
  Flight& c = *std::prev(fl)->second;
  if (page < c.next || page >= c.end) return Where::kEmpty;
  if (page < c.busy) {
    // In the ioctl under way: its UFFDIO_COPY wakes the thread (or, should it
    // stop short of the page, the worker hands the fault back: Fly()).
    c.waiters.push_back(f);
    return Where::kJoined;
  }
  // Claimed, not reached yet: the window (past the ioctl under way) is the
  // fault's now, the claim's part after it goes back to `pending`. A claim
  // holds present pages only (ClaimPresent), so postcopy needs no check here.
  uint64_t from = std::max(c.busy, base), to = std::min(c.end, base + o_.fault_bytes);
  auto off = [&](uint64_t at) { return c.off + (at - c.key); };
  if (to < c.end) mm->pending.emplace(to, Piece{c.end, c.file, off(to)});
  c.end = from;
  if (c.next == c.end) Unlist(mm, &c);
  *s = from;
  *e = to;
  *pc = Piece{to, c.file, off(from)};
  return Where::kTaken;
}

void Server::HandleFault(Mm* mm, uint64_t addr, int64_t seen, std::vector<std::pair<uint64_t, int64_t>>* again) {
  uint64_t page = addr & ~(kPage - 1);
  uint64_t s = 0, e = 0;
  Piece pc;
  ControlRecord need = {};
  Where w;
  {
    std::lock_guard<PiMutex> g(mu_);
    w = Locate(mm, Fault{addr, seen}, &s, &e, &pc, &need);
    if (w == Where::kTaken) mm->cursor = e;  // the background goes on from the fault's neighbourhood
  }
  if (w == Where::kJoined) {
    st_->joined_faults++;
    return;
  }
  if (w == Where::kHeld) {
    waiting_.push_back({mm, addr, seen});
    st_->waited_faults++;
    Need(need.file, need.off, need.len);
    return;
  }
  if (w == Where::kEmpty) {
    // Not pending, not claimed: a page the images leave empty (zeros), or one
    // placed since the fault (that copy woke the thread already; EEXIST then).
    struct uffdio_zeropage z = {};
    z.range.start = page;
    z.range.len = kPage;
    int rc = ioctl(mm->uffd, UFFDIO_ZEROPAGE, &z);
    if (rc < 0 && errno == EAGAIN) {
      again->push_back({addr, seen});
      return;
    }
    if (rc < 0 && (errno == ESRCH || errno == ENOSPC)) {
      Gone(mm);
      return;
    }
    if (rc < 0) {
      struct uffdio_range r = {page, kPage};
      ioctl(mm->uffd, UFFDIO_WAKE, &r);
    }
    st_->zero_faults++;
    Answered(seen, NowUs(), 2);
    return;
  }
  // The faulting page first (its copy wakes the thread), then the rest of the
  // window around it, forward first, a piece at a time: once the
  // userfaultfd has another message (the thread faulted again, most likely
  // elsewhere), the rest goes back to `pending` for the background, which
  // goes on from there. What a copy could not place (an address-space change
  // under way) goes back to `pending` too.
  struct Part {
    uint64_t s, e;
  } parts[3] = {{page, page + kPage}, {page + kPage, e}, {s, page}};
  std::vector<Piece> punch;
  Put r = Put::kDone;
  bool yield = false, demoted = false;
  int64_t t_answered = 0;
  uint32_t copy_us = 0;
  for (size_t i = 0; i < 3; i++) {
    for (uint64_t at = parts[i].s; at < parts[i].e;) {
      uint64_t to = i == 0 ? parts[i].e : std::min(parts[i].e, at + kWindowPiece);
      Piece from{to, pc.file, pc.off + (at - s)};
      if (i > 0 && !demoted && reader_rt_ && r == Put::kDone) {
        // The faulting thread is awake: the rest of the window is a favour,
        // copied at normal priority so that the thread, woken maybe on this
        // very CPU, can run (and fault again) at once rather than after the
        // window (a real-time thread is not preempted by it). Not lower: a
        // fault that arrives meanwhile must not wait behind other tasks.
        NormalPriority();
        demoted = true;
      }
      if (r == Put::kDone && !yield && i > 0) {
        struct pollfd pf = {mm->uffd, POLLIN, 0};
        yield = poll(&pf, 1, 0) > 0;
        if (yield) {
          std::lock_guard<PiMutex> g(mu_);
          mm->cursor = at;
        }
      }
      if (r != Put::kDone || yield) {
        std::lock_guard<PiMutex> g(mu_);
        Release(mm, at, parts[i].e, Piece{parts[i].e, pc.file, pc.off + (at - s)});
        break;
      }
      uint64_t done = 0;
      int64_t t_copy = NowUs();
      r = Place(mm, at, to, from, true, &done);
      if (done) punch.push_back(Piece{done, from.file, from.off});
      if (i == 0 && r == Put::kDone) t_answered = NowUs(), copy_us = uint32_t(t_answered - t_copy);
      at += done;
      if (r == Put::kDone) at = to;  // (placed, or skipped: already there or unmapped)
    }
  }
  if (demoted) ReaderPriority();
  if (t_answered) {
    uint64_t bytes = 0;
    for (const Piece& p : punch) bytes += p.end;
    Answered(seen, t_answered, 0, bytes, copy_us, uint32_t(NowUs() - t_answered));
  }
  if (r == Put::kGone) Gone(mm);
  if (r == Put::kAgain && punch.empty()) again->push_back({addr, seen});  // its own page is not in place
  if (r == Put::kFatal) return;
  if (o_.punch && !punch.empty()) {
    // The store's pages are given back off the fault path (Puncher).
    std::lock_guard<PiMutex> g(mu_);
    if (mm->family->members == 1)
      for (const Piece& p : punch) Placed(p.file, p.off, p.end);
  }
}

// Closes mm's gate for a read: no background ioctl of it starts, and those
// under way are waited for (the comment at the top says why).
int64_t Server::CloseGate(Mm* mm) {
  int64_t t = NowUs();
  {
    std::unique_lock<PiMutex> g(mu_);
    mm->gate = true;
    if (mm->busy && boost_) {
      // The ioctls under way run real-time until they return: a worker
      // preempted there would keep this read (and the faults behind it)
      // waiting for a scheduling slice.
      struct sched_param sp = {};
      sp.sched_priority = kBoostRtPrio;
      for (auto& [key, c] : mm->flights)
        if (c->busy > c->next && !c->boosted) {
          if (sched_setscheduler(c->tid, SCHED_FIFO, &sp) == 0)
            c->boosted = true;
          else
            boost_ = false;
        }
    }
    if (mm->busy) {
      // A background ioctl is one small slice while faults arrive (kStormSlice):
      // spin a moment rather than sleep (a wake-up costs more than that here).
      g.unlock();
      for (int64_t until = t + kGateSpinUs; mm->busy && NowUs() < until;) CpuRelax();
      g.lock();
    }
    gate_cv_.wait(g, [&] { return mm->busy == 0 || stop_; });
  }
  int64_t waited = NowUs() - t;
  st_->gate_us_total += waited;
  st_->gate_us_max = std::max<int64_t>(st_->gate_us_max, waited);
  st_->batches++;
  return waited;
}

void Server::OpenGate(Mm* mm) {
  {
    std::lock_guard<PiMutex> g(mu_);
    mm->gate = false;
    mm->retry_at = 0;
  }
  work_cv_.notify_all();
}

// The background claims' unplaced parts back into `pending` (mu_ held; the
// gate closed and no ioctl under way, so no claim has a part in the kernel
// or a fault waiting on it): the map is then exact for an event.
void Server::Recall(Mm* mm) {
  for (auto& [key, c] : mm->flights) {
    if (c->next < c->end) mm->pending.emplace(c->next, Piece{c->end, c->file, c->off + (c->next - key)});
    c->end = c->next;
    c->listed = false;
  }
  mm->flights.clear();
}

// Takes a claim off the list once nothing of it is unplaced or in an ioctl (mu_ held).
void Server::Unlist(Mm* mm, Flight* c) {
  if (c->listed && c->busy == c->next && c->next >= c->end) {
    mm->flights.erase(c->key);
    c->listed = false;
  }
}

// All messages of one userfaultfd, a read at a time.
void Server::HandleMm(Mm* mm) {
  int64_t seen = NowUs();
  std::vector<std::pair<uint64_t, int64_t>> again;
  for (int spins = 0;; spins++) {
    int64_t t_read = NowUs();
    int64_t gate_us = CloseGate(mm);
    struct uffd_msg msgs[32];
    ssize_t n = read(mm->uffd, msgs, sizeof(msgs));
    if (n > 0 && Tracing(t_read)) {
      std::lock_guard<PiMutex> g(stat_mu_);
      st_->trace_reads.push_back({t_read - t_fin_, uint32_t(gate_us), uint32_t(size_t(n) / sizeof(struct uffd_msg))});
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      OpenGate(mm);
      Gone(mm);
      break;
    }
    size_t k = n > 0 ? size_t(n) / sizeof(struct uffd_msg) : 0;
    if (spins) seen = NowUs();  // the first read's messages waited since the wake-up, later ones since their read
    // The events first, in their order, then the faults. All were raised
    // before this read, and every copy we make lands after it: after the
    // events took effect (the read let them go on). So the faults are served
    // from the address space as the events left it: a fault on a page just
    // zapped or unmapped gets no old data (a copy could land after the zap),
    // one at an address mremap moved away finds nothing there (its page is
    // now pending at the new address), and a fork's child needs what the
    // parent lacked before this batch's faults are copied into the parent.
    bool events = false, faults = false;
    for (size_t i = 0; i < k; i++) {
      events = events || msgs[i].event != UFFD_EVENT_PAGEFAULT;
      faults = faults || msgs[i].event == UFFD_EVENT_PAGEFAULT;
    }
    if (faults) last_fault_ = NowUs();
    if (events) {
      std::lock_guard<PiMutex> g(mu_);
      Recall(mm);
    } else {
      OpenGate(mm);  // faults only: the background goes on while they are copied
    }
    for (size_t i = 0; i < k && events && !stop_; i++) {
      const struct uffd_msg& m = msgs[i];
      switch (m.event) {
        case UFFD_EVENT_PAGEFAULT: break;
        case UFFD_EVENT_FORK: {
          std::map<uint64_t, Piece> copy;
          std::shared_ptr<Family> fam;
          {
            std::lock_guard<PiMutex> g(mu_);
            copy = mm->pending;
            fam = mm->family;
            fam->members++;
          }
          AddMm(int(m.arg.fork.ufd), mm->id, nullptr, fam, &copy);
          st_->forks++;
          break;
        }
        case UFFD_EVENT_REMAP: {
          std::lock_guard<PiMutex> g(mu_);
          uint64_t from = m.arg.remap.from, to = m.arg.remap.to, len = m.arg.remap.len;
          std::vector<std::pair<uint64_t, Piece>> moved;
          auto it = mm->pending.upper_bound(from);
          if (it != mm->pending.begin()) --it;
          for (; it != mm->pending.end() && it->first < from + len; ++it) {
            uint64_t a = std::max(it->first, from), b = std::min(it->second.end, from + len);
            if (a < b) moved.push_back({a, Piece{b, it->second.file, it->second.off + (a - it->first)}});
          }
          Drop(mm, from, from + len, false);
          for (auto& mv : moved) {
            Drop(mm, mv.first - from + to, mv.second.end - from + to, false);
            mm->pending.emplace(mv.first - from + to, Piece{mv.second.end - from + to, mv.second.file, mv.second.off});
          }
          break;
        }
        case UFFD_EVENT_REMOVE:
        case UFFD_EVENT_UNMAP: {
          // Zeros from now on (MADV_DONTNEED) or no mapping: nothing to place.
          std::lock_guard<PiMutex> g(mu_);
          Drop(mm, m.arg.remove.start, m.arg.remove.end, true);
          break;
        }
        default: Fatal("lazy-pages: unexpected userfaultfd event " + std::to_string(m.event));
      }
    }
    for (size_t i = 0; i < k && !stop_; i++)
      if (msgs[i].event == UFFD_EVENT_PAGEFAULT) HandleFault(mm, msgs[i].arg.pagefault.address, seen, &again);
    if (events) OpenGate(mm);
    if (stop_ || mm->dead) break;
    // One read's worth at a time: other userfaultfds get their turn between
    // batches (epoll brings us back at once if more are queued).
    if (again.empty()) break;
    if (k) continue;
    // A copy found an address-space change under way whose event is not
    // queued yet: wait for it, then try the faults again.
    std::vector<std::pair<uint64_t, int64_t>> retry;
    retry.swap(again);
    struct pollfd pf = {mm->uffd, POLLIN, 0};
    poll(&pf, 1, spins < 100 ? 0 : 1);
    for (auto& f : retry) HandleFault(mm, f.first, f.second, &again);
    if (mm->dead || stop_) break;
  }
}

void Server::Worker() {
  NormalPriority();  // the event thread that started us runs above it
  for (;;) {
    Mm* mm = nullptr;
    Flight fl{};
    {
      std::unique_lock<PiMutex> g(mu_);
      for (;;) {
        if (stop_) return;
        int64_t now = NowUs();
        int64_t soonest = 0;
        uint64_t s = 0, e = 0;
        Piece pc;
        for (size_t i = 0; i < mms_.size() && !mm; i++) {
          Mm* m = mms_[(rr_ + i) % mms_.size()].get();
          if (m->gate || m->dead || m->pending.empty()) continue;
          if (m->retry_at > now) {
            soonest = soonest ? std::min(soonest, m->retry_at) : m->retry_at;
            continue;
          }
          if (await_ ? ClaimPresent(m, m->cursor, o_.chunk_bytes, &s, &e, &pc)
                     : Claim(m, m->cursor, o_.chunk_bytes, &s, &e, &pc)) {
            mm = m;
            rr_ = (rr_ + i + 1) % mms_.size();
          }
        }
        if (mm) {
          fl = Flight{s, s, s, e, pc.file, pc.off, true, {}, pid_t(syscall(SYS_gettid)), false};
          mm->flights[s] = &fl;
          mm->cursor = e;
          break;
        }
        if (soonest)
          work_cv_.wait_for(g, std::chrono::microseconds(std::max<int64_t>(soonest - now, 50)));
        else
          work_cv_.wait(g);
      }
    }
    Fly(mm, &fl);
  }
}

// Places a claim a slice (one UFFDIO_COPY) at a time, each started only while
// the mm's gate is open; the claim is kept while the gate is closed (a fault
// may take its part ahead of us meanwhile, an event may recall it).
void Server::Fly(Mm* mm, Flight* c) {
  const pid_t tid = pid_t(syscall(SYS_gettid));
  const int base_nice = getpriority(PRIO_PROCESS, tid);
  bool low = false;
  for (;;) {
    uint64_t a, b;
    Piece pc;
    int64_t now = NowUs();
    bool storm = now - last_fault_ < kStormUs;
    if (storm && t_fin_ && now - t_fin_ < kResumeGraceUs) {
      // The resume's first burst (the comment at the top): nothing placed meanwhile.
      bool quit;
      {
        std::lock_guard<PiMutex> g(mu_);
        quit = stop_ || mm->dead;
      }
      if (!quit) {
        usleep(500);
        continue;
      }
    }
    if (storm != low) {
      setpriority(PRIO_PROCESS, tid, storm ? kStormNice : base_nice);
      low = storm;
    }
    {
      std::unique_lock<PiMutex> g(mu_);
      work_cv_.wait(g, [&] { return !mm->gate || stop_ || mm->dead; });
      if (stop_ || mm->dead || c->next >= c->end) {
        if (c->listed) mm->flights.erase(c->key);
        c->listed = false;
        if (!stop_) Wake();  // the event thread checks whether all is in place
        g.unlock();
        if (low) setpriority(PRIO_PROCESS, tid, base_nice);
        return;
      }
      a = c->next;
      uint64_t slice = storm ? std::min(o_.slice_bytes, kStormSlice) : o_.slice_bytes;
      b = std::min(c->end, a + slice);
      c->busy = b;
      mm->busy++;
      pc = Piece{b, c->file, c->off + (a - c->key)};
    }
    uint64_t done = 0;
    int64_t t_slice = NowUs();
    Put r = Place(mm, a, b, pc, false, &done);
    if (Tracing(t_slice)) {
      std::lock_guard<PiMutex> g(stat_mu_);
      st_->trace_slices.push_back({t_slice - t_fin_, uint32_t(NowUs() - t_slice), uint32_t(done)});
    }
    std::vector<Fault> answered;
    bool back = false, unboost = false;
    {
      std::lock_guard<PiMutex> g(mu_);
      c->next = a + done;
      c->busy = c->next;
      unboost = c->boosted;
      c->boosted = false;
      // The faults that joined this ioctl: woken by its copy, or (the page not
      // placed) handed back to the event thread, which answers them afresh.
      for (const Fault& f : c->waiters)
        if ((f.addr & ~(kPage - 1)) < c->next)
          answered.push_back(f);
        else if (r != Put::kGone) {
          handed_back_.push_back({mm, f.addr, f.seen});
          back = true;
        }
      c->waiters.clear();
      if (--mm->busy == 0) gate_cv_.notify_all();
      if (r == Put::kAgain) {
        if (c->next < c->end) Release(mm, c->next, c->end, Piece{c->end, c->file, c->off + (c->next - c->key)});
        c->end = c->next;
        mm->retry_at = NowUs() + 200;
        mm->cursor = c->next;
      }
      if (r == Put::kFatal) c->end = c->next;
      Unlist(mm, c);
      if (o_.punch && done && mm->family->members == 1) Placed(pc.file, pc.off, done);
    }
    if (unboost) {  // with mu_ released and the read told
      struct sched_param sp = {};
      sched_setscheduler(0, SCHED_OTHER, &sp);
    }
    for (const Fault& f : answered) {
      // Woken by the copy unless its page was skipped as already there or gone: wake it anyway.
      struct uffdio_range rg = {f.addr & ~(kPage - 1), kPage};
      ioctl(mm->uffd, UFFDIO_WAKE, &rg);
      Answered(f.seen, NowUs(), 1);
    }
    if (back) Wake();
    if (r == Put::kGone) Gone(mm);
  }
}

// File pages [off, off + len) are in the workload (or no longer needed), and
// no other mm needs them (mu_ held): queued to be given back.
void Server::Placed(uint32_t file, uint64_t off, uint64_t len) {
  if (!to_punch_.empty() && to_punch_.back().file == file && to_punch_.back().off + to_punch_.back().end == off)
    to_punch_.back().end += len;
  else
    to_punch_.push_back(Piece{len, file, off});
  to_punch_bytes_ += len;
  if (to_punch_bytes_ >= kPunchBatch) punch_cv_.notify_one();
}

// Gives back what is queued: once ~1 MiB is (kPunchBatch), else every
// kPunchIdleUs. A thread of its own at normal priority: the workers run at
// nice 19 while faults arrive, and on a busy machine the store they left to
// give back grew beside the workload (tens of MiB at 1 GiB).
void Server::Puncher() {
  NormalPriority();
  for (;;) {
    std::vector<Piece> punch;
    {
      std::unique_lock<PiMutex> g(mu_);
      punch_cv_.wait_for(g, std::chrono::microseconds(kPunchIdleUs),
                         [&] { return stop_ || to_punch_bytes_ >= kPunchBatch; });
      if (stop_) return;
      punch.swap(to_punch_);
      to_punch_bytes_ = 0;
    }
    PunchAll(std::move(punch));
  }
}

// Once the restore is done, the store's ranges that no image lists are
// queued to be given back: the pages the restore itself read (not lazy), and
// the files' holes (cheap to punch).
void Server::Unneeded() {
  std::vector<std::vector<std::pair<uint64_t, uint64_t>>> used(src_.size());
  for (const auto& im : o_.images)
    for (const auto& e : im.extents) used[e.file].push_back({e.off, e.off + (e.end - e.start)});
  std::lock_guard<PiMutex> g(mu_);
  for (uint32_t f = 0; f < used.size(); f++) {
    std::sort(used[f].begin(), used[f].end());
    uint64_t at = 0;
    for (const auto& u : used[f]) {
      if (u.first > at) Placed(f, at, u.first - at);
      at = std::max(at, u.second);
    }
    if (src_[f].size > at) Placed(f, at, src_[f].size - at);
  }
}

// Gives file ranges back (Piece.end is the length here), adjacent ones in
// one punch: the threads queue them in the order they place them.
void Server::PunchAll(std::vector<Piece> punch) {
  std::sort(punch.begin(), punch.end(),
            [](const Piece& a, const Piece& b) { return a.file != b.file ? a.file < b.file : a.off < b.off; });
  size_t n = 0;
  for (const Piece& p : punch)
    if (n && punch[n - 1].file == p.file && punch[n - 1].off + punch[n - 1].end == p.off)
      punch[n - 1].end += p.end;
    else
      punch[n++] = p;
  punch.resize(n);
  for (const Piece& p : punch) {
    int64_t t = NowUs();
    if (fallocate(src_[p.file].fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(p.off), off_t(p.end)) == 0)
      punched_ += p.end;
    if (Tracing(t)) {
      std::lock_guard<PiMutex> g(stat_mu_);
      st_->trace_punches.push_back({t - t_fin_, uint32_t(NowUs() - t), uint32_t(p.end)});
    }
  }
}

// Everything placed (mu_ held)?
bool Server::Complete() {
  if (!finished_) return false;
  for (auto& m : mms_)
    if (!m->dead && (!m->pending.empty() || !m->flights.empty())) return false;
  return handed_back_.empty();
}

bool Server::Run(std::string* err) {
  if (!Setup(err)) return false;
  // Faults are answered here: ahead of the background copies when the CPUs
  // are busy (the workload stalls meanwhile). Needs privilege; best effort.
  // Real-time when allowed: a fault's message is read at once, whatever else
  // runs (the kernel's real-time throttling still leaves others their share).
  boost_ = reader_rt_ = ReaderPriority();
  std::vector<std::thread> workers;
  int64_t deadline = NowUs() + int64_t(o_.connect_timeout_ms) * 1000;
  bool ok = true;
  for (;;) {
    {
      std::lock_guard<PiMutex> g(mu_);
      if (stop_) break;
      if (Complete()) break;
    }
    if (ctl_ < 0 && NowUs() > deadline) {
      Fatal("lazy-pages: the restore did not connect");
      break;
    }
    struct epoll_event evs[64];
    bool back;
    {
      std::lock_guard<PiMutex> g(mu_);
      back = !handed_back_.empty();
    }
    int n = epoll_wait(ep_, evs, 64, back ? 1 : 200);
    if (n < 0 && errno != EINTR) {
      Fatal(Errno("epoll_wait", errno));
      break;
    }
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == wake_) {
        uint64_t v;
        if (read(wake_, &v, sizeof(v)) < 0) { /* nothing */
        }
      } else if (fd == listen_) {
        int c = accept4(listen_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        if (ctl_ >= 0) {  // one restore per server
          close(c);
          continue;
        }
        ctl_ = c;
        t_accept_ = NowUs();
        struct epoll_event ev = {};
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.fd = ctl_;
        epoll_ctl(ep_, EPOLL_CTL_ADD, ctl_, &ev);
      } else if (fd == control_ && control_ >= 0) {
        if (!ReadPresence()) {
          epoll_ctl(ep_, EPOLL_CTL_DEL, control_, nullptr);
          close(control_);
          control_ = -1;
          // No more data can come: fine only if every page still to place is here.
          uint64_t missing = MissingPages();
          if (missing || !waiting_.empty()) {
            Fatal("lazy-pages: the page source went away before " + std::to_string(missing) +
                  " pages of the tree's memory arrived");
            break;
          }
        }
      } else if (fd == ctl_) {
        bool was = finished_;
        if (!ReadControl()) {
          epoll_ctl(ep_, EPOLL_CTL_DEL, ctl_, nullptr);
          if (!finished_) {
            Fatal("lazy-pages: the restore went away before it finished");
            break;
          }
        }
        if (finished_ && !was) {
          int t = std::max(1, o_.threads);
          for (int k = 0; k < t; k++) workers.emplace_back([this] { Worker(); });
          if (o_.punch) {
            Unneeded();
            workers.emplace_back([this] { Puncher(); });
          }
        }
      } else {
        Mm* mm = nullptr;
        {
          std::lock_guard<PiMutex> g(mu_);
          auto it = by_fd_.find(fd);
          if (it != by_fd_.end()) mm = it->second;
        }
        if (!mm) continue;
        if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
          epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
          Gone(mm);
          continue;
        }
        if (mm->dead) {
          epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
          continue;
        }
        HandleMm(mm);
      }
    }
    if (!waiting_.empty() && !stop_) ServeWaiters();
    if (back && !stop_) AnswerHandedBack();
  }
  {
    std::lock_guard<PiMutex> g(mu_);
    stop_ = true;
    if (!fatal_.empty()) {
      *err = fatal_;
      ok = false;
    }
  }
  work_cv_.notify_all();
  gate_cv_.notify_all();
  punch_cv_.notify_all();
  for (auto& t : workers) t.join();
  if (ok && o_.punch) PunchAll(std::move(to_punch_));
  if (ok) st_->fill_ms = (NowUs() - t_fin_) / 1000;
  st_->copied_pages = copied_;
  st_->punched_bytes = punched_;
  st_->copies = copies_;
  st_->retries = retries_;
  st_->dropped_pages = dropped_;
  return ok;
}

bool Serve(const Options& o, Stats* st, std::string* err) {
  Server s(o, st);
  return s.Run(err);
}

}  // namespace lazyfill
}  // namespace phaul
