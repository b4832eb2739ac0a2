// CRIU-compatible page server: the destination end of `criu dump --page-server`.
//
// Speaks the wire protocol of CRIU's page-xfer.c (4.1 with 24-byte headers,
// 4.2 with 32-byte headers) on an already connected and authenticated stream
// socket and writes pagemap-*.img / pages-*.img as `criu page-server` would
// (byte for byte with 4.1; with 4.2 the one difference is that pagemap field 2
// holds nr_pages where 4.2 writes 0, so 4.1 readers work too), ready for
// `criu restore`. Written from the documented format (docs/DESIGN.md section 5).
// What a 4.1.1/4.2.1 `criu dump --page-server` sends, observed: OPEN2 per
// pagemap (shmem ones first), ADD_F with PE_PRESENT or PE_PRESENT|PE_LAZY,
// then FORCE_CLOSE (--ps-socket) or CLOSE (--address/--port). PARENT comes
// only from pre-dump, ADD/HOLE/OPEN only from old CRIUs, GET only in lazy mode.
//
// JS surface (wrapped by src/transport/page-server.ts):
//   servePages(fd, dir, { headerSize, maxEntryPages?, maxBytes?, idleTimeoutMs? })
//       -> { done: Promise<{ entries, pages, bytes, images }>, abort(reason?) }
//   dupStreamFd(fd) -> fd         (a blocking, close-on-exec duplicate)
//   streamSocketPair() -> [fd, fd] (AF_UNIX stream, blocking, close-on-exec)
//
// Each server runs on its own thread (not libuv's pool: a transfer can take
// seconds and would starve fs work queued behind it). Page data goes
// socket -> pipe -> file with splice(2) and never enters user space.
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "modules.h"
#include "thread_job.h"

namespace phaul {
namespace {

// ---- protocol constants (CRIU page-xfer.c, images/pagemap.proto, magic.h)
enum : uint32_t {
  kOpAdd = 1,
  kOpHole = 2,
  kOpOpen = 3,
  kOpOpen2 = 4,
  kOpParent = 5,
  kOpAddF = 6,
  kOpGet = 7,
  kOpClose = 0x1023,
  kOpForceClose = 0x1024,
};
enum : uint32_t { kPeParent = 1, kPeLazy = 2, kPePresent = 4 };
enum : uint32_t { kTypePid = 1, kTypeShmem = 2 };
constexpr uint32_t kImgCommonMagic = 0x54564319;
constexpr uint32_t kPagemapMagic = 0x56084025;
// The page server numbers its pages images from 0x10001 so they never collide
// with the ids the dumping criu allocates itself in the same directory
// (CRIU: up_page_ids_base()). Matching it keeps our images identical to CRIU's.
constexpr uint32_t kFirstPagesId = 0x10001;
constexpr uint64_t kPidMax = 1u << 22;           // PID_MAX_LIMIT
constexpr uint64_t kUserAddrLimit = 1ull << 57;  // 5-level paging user space
constexpr size_t kMaxPagemaps = 1 << 16;         // OPENs per session
constexpr size_t kPagemapFlush = 64 << 10;       // buffered pagemap bytes

// One failure, carried out of the protocol loop. `code` becomes error.code in JS.
struct Fail {
  const char* code;  // "protocol" | "network" | "io" | "nospace" | "aborted"
  std::string msg;
};
[[noreturn]] void Throw(const char* code, const std::string& msg) { throw Fail{code, msg}; }
[[noreturn]] void ThrowErrno(const std::string& what) {
  int e = errno;
  if (e == ENOSPC || e == EDQUOT) Throw("nospace", what + ": " + strerror(e));
  Throw("io", what + ": " + strerror(e));
}
std::string Hex(uint64_t v) {
  char b[24];
  snprintf(b, sizeof b, "0x%llx", (unsigned long long)v);
  return b;
}

// ---- tiny protobuf writer: only varint fields are needed
void PutVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(char(v | 0x80));
    v >>= 7;
  }
  out.push_back(char(v));
}
void PutField(std::string& out, uint32_t field, uint64_t v) {
  PutVarint(out, uint64_t(field) << 3);  // wire type 0 (varint)
  PutVarint(out, v);
}
// CRIU's pb_write_one: u32 length (native endian), then the packed message.
void PutRecord(std::string& out, const std::string& msg) {
  uint32_t n = uint32_t(msg.size());
  out.append(reinterpret_cast<const char*>(&n), 4);
  out += msg;
}

struct Options {
  int headerSize = 24;
  uint64_t maxEntryPages = 1 << 20;
  uint64_t maxBytes = 0;  // 0: what the file system has free when we start
  uint32_t idleTimeoutMs = 0;
};

struct Stats {
  uint64_t entries = 0, pages = 0, bytes = 0;
  std::vector<std::string> images;
};

// Shared between the JS handle (abort) and the worker thread (close).
struct SockState {
  std::mutex mu;
  int fd;
  bool closed = false;
  bool aborted = false;
  std::string abortReason;
};

void WriteAll(int fd, const char* p, size_t n, const std::string& name) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) ThrowErrno("write " + name);
    p += w;
    n -= size_t(w);
  }
}

class Session {
 public:
  Session(std::shared_ptr<SockState> st, std::string dir, Options o)
      : st_(std::move(st)), sk_(st_->fd), dirPath_(std::move(dir)), o_(o) {}
  ~Session() {
    // Never CloseImage() here: it may throw, and a destructor must not. On
    // failure the half-written files stay for the caller to remove with the dir.
    if (pmfd_ >= 0) close(pmfd_);
    if (pagesfd_ >= 0) close(pagesfd_);
    if (dirfd_ >= 0) close(dirfd_);
    if (pipe_[0] >= 0) close(pipe_[0]);
    if (pipe_[1] >= 0) close(pipe_[1]);
  }

  Stats Run() {
    Setup();
    for (;;) {
      uint8_t h[32];
      if (!RecvHeader(h)) Throw("network", "connection closed before CLOSE (" + Progress() + ")");
      uint32_t cmd;
      uint64_t nr, vaddr, dst;
      memcpy(&cmd, h, 4);
      if (o_.headerSize == 24) {  // {u32 cmd; u32 nr_pages; u64 vaddr; u64 dst_id}
        uint32_t n32;
        memcpy(&n32, h + 4, 4);
        nr = n32;
        memcpy(&vaddr, h + 8, 8);
        memcpy(&dst, h + 16, 8);
      } else {  // {u32 cmd; u32 pad (not zeroed by CRIU: ignore); u64 nr; u64 vaddr; u64 dst_id}
        memcpy(&nr, h + 8, 8);
        memcpy(&vaddr, h + 16, 8);
        memcpy(&dst, h + 24, 8);
      }
      uint32_t op = cmd & 0xffff, flags = cmd >> 16;
      if (flags && op != kOpAddF)
        Throw("protocol", "flags " + Hex(flags) + " on op " + Hex(op) + " (only ADD_F carries flags)");
      switch (op) {
        case kOpOpen: Open(dst, false); break;
        case kOpOpen2: Open(dst, true); break;
        case kOpParent: {
          // Asked before a pre-dump: "do you have a parent image?" We never do.
          Decode(dst, nullptr);
          int32_t no = 0;
          Send(&no, sizeof no);
          break;
        }
        case kOpAdd: Add(dst, nr, vaddr, kPePresent, "ADD"); break;
        case kOpHole: Add(dst, nr, vaddr, kPeParent, "HOLE"); break;
        case kOpAddF: Add(dst, nr, vaddr, flags, "ADD_F"); break;
        case kOpClose:
        case kOpForceClose: {
          // Everything is already in the page cache; the pagemap tail is a few
          // KiB. Close the images first so a write error becomes status -1
          // instead of a false "all received", then answer at once (the socket
          // is TCP_NODELAY and never corked, so this goes out immediately).
          int32_t status = 0;
          try {
            CloseImage();
          } catch (...) {
            status = -1;
            TrySend(&status, sizeof status);
            throw;
          }
          Send(&status, sizeof status);
          return std::move(stats_);
        }
        case kOpGet: Throw("protocol", "GET (lazy-pages request) is not supported: this server only receives pages");
        default: Throw("protocol", "unknown op " + Hex(cmd));
      }
    }
  }

 private:
  void Setup() {
    // Replies (OPEN2, PARENT, CLOSE) must leave at once; fails harmlessly on
    // AF_UNIX. (The ~200 ms close stall of a dump over TCP is the dumping
    // criu's own TCP_CORK, on the sending side, which no receiver can undo:
    // give criu a socketpair (--ps-socket) and relay it, as data-channel does.)
    int one = 1;
    isTcp_ = setsockopt(sk_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0;
    if (o_.idleTimeoutMs) {
      timeval tv{time_t(o_.idleTimeoutMs / 1000), suseconds_t((o_.idleTimeoutMs % 1000) * 1000)};
      if (setsockopt(sk_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) ThrowErrno("SO_RCVTIMEO");
    }
    dirfd_ = open(dirPath_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd_ < 0) ThrowErrno("open " + dirPath_);
    page_ = uint64_t(sysconf(_SC_PAGESIZE));  // CRIU's PAGE_SIZE is the arch's
    if (o_.maxBytes == 0) {
      struct statvfs sv;
      if (fstatvfs(dirfd_, &sv) < 0) ThrowErrno("statvfs " + dirPath_);
      o_.maxBytes = uint64_t(sv.f_bavail) * sv.f_frsize;
    }
    maxTotalPages_ = o_.maxBytes / page_;
    if (pipe2(pipe_, O_CLOEXEC) < 0) ThrowErrno("pipe");
    // Largest pipe we may have: fewer splice round trips per entry. Without
    // CAP_SYS_RESOURCE the per-user soft limit may refuse: halve until it fits.
    long want = 1 << 20;
    if (FILE* f = fopen("/proc/sys/fs/pipe-max-size", "re")) {
      if (fscanf(f, "%ld", &want) != 1) want = 1 << 20;
      fclose(f);
    }
    for (long sz = want; sz >= long(page_); sz /= 2)
      if (fcntl(pipe_[1], F_SETPIPE_SZ, sz) >= 0) break;
    int got = fcntl(pipe_[1], F_GETPIPE_SZ);
    if (got <= 0) ThrowErrno("F_GETPIPE_SZ");
    pipeSize_ = size_t(got);
  }

  // false on a clean EOF at a header boundary, throws on EOF inside one.
  bool RecvHeader(uint8_t* h) {
    // Acknowledge what we have read at once instead of after the delayed-ACK
    // timer: a sender with Nagle on holds its next small segment (say, the
    // CLOSE header) until its last data is acknowledged; that costs ~40 ms
    // per exchange otherwise. Quick-ack mode is not sticky, so set it each time.
    if (isTcp_) {
      int one = 1;
      setsockopt(sk_, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
    size_t got = 0, want = size_t(o_.headerSize);
    while (got < want) {
      ssize_t r = recv(sk_, h + got, want - got, MSG_WAITALL);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) NetError("recv");
      if (r == 0) {
        if (got == 0) return false;
        Throw("network",
              "connection closed inside a header (" + std::to_string(got) + " of " + std::to_string(want) + " bytes)");
      }
      got += size_t(r);
    }
    return true;
  }

  [[noreturn]] void NetError(const char* what) {
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      Throw("network", "no data from the peer for " + std::to_string(o_.idleTimeoutMs) + " ms");
    Throw("network", std::string(what) + " from peer: " + strerror(errno));
  }

  void Send(const void* p, size_t n) {
    if (!TrySend(p, n)) Throw("network", std::string("send reply: ") + strerror(errno));
  }
  bool TrySend(const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      ssize_t w = send(sk_, c, n, MSG_NOSIGNAL);  // never SIGPIPE the host process
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      c += w;
      n -= size_t(w);
    }
    return true;
  }

  // dst_id = id << 8 | type. Older CRIUs used other type numbers; we only
  // speak 4.1+ (the handshake checks versions), so anything else is an error.
  uint32_t Decode(uint64_t dst, uint64_t* idOut) {
    uint32_t type = uint32_t(dst & 0xff);
    uint64_t id = dst >> 8;
    if (type == kTypePid) {
      if (id == 0 || id > kPidMax) Throw("protocol", "pagemap pid " + std::to_string(id) + " out of range");
    } else if (type != kTypeShmem) {
      Throw("protocol", "unknown pagemap type " + std::to_string(type) + " in dst_id " + Hex(dst));
    }
    if (idOut) *idOut = id;
    return type;
  }

  int Create(const std::string& name) {
    // O_NOFOLLOW: a planted symlink in the image dir must not redirect our writes.
    int fd = openat(dirfd_, name.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) ThrowErrno("create " + name);
    stats_.images.push_back(name);
    return fd;
  }

  void Open(uint64_t dst, bool reply) {
    uint64_t id;
    uint32_t type = Decode(dst, &id);
    // CRIU's server would silently truncate and restart a re-opened pagemap,
    // orphaning the first pages file; no CRIU client does it, so refuse.
    if (!opened_.insert(dst).second) Throw("protocol", "pagemap " + Hex(dst) + " opened twice");
    if (opened_.size() > kMaxPagemaps) Throw("protocol", "more than " + std::to_string(kMaxPagemaps) + " pagemaps");
    CloseImage();
    std::string pm = (type == kTypePid ? "pagemap-" : "pagemap-shmem-") + std::to_string(id) + ".img";
    uint32_t pagesId = nextPagesId_++;
    pagemapName_ = pm;
    pmfd_ = Create(pm);
    pagesfd_ = Create("pages-" + std::to_string(pagesId) + ".img");
    curDst_ = dst;
    nextVaddr_ = 0;
    pmbuf_.clear();
    uint32_t magics[2] = {kImgCommonMagic, kPagemapMagic};
    pmbuf_.append(reinterpret_cast<const char*>(magics), sizeof magics);
    std::string head;
    PutField(head, 1, pagesId);  // pagemap_head.pages_id
    PutRecord(pmbuf_, head);
    if (reply) {
      char hasParent = 0;  // flat images only: every page comes with data
      Send(&hasParent, 1);
    }
  }

  void Add(uint64_t dst, uint64_t nr, uint64_t vaddr, uint32_t flags, const char* opName) {
    std::string op = opName;
    if (pmfd_ < 0 || dst != curDst_) {
      // (CRIU would open it implicitly, "Deprecated IO w/o open"; 4.1 always opens.)
      Throw("protocol", op + " for pagemap " + Hex(dst) + " which is not open");
    }
    if (flags & ~(kPeParent | kPeLazy | kPePresent)) Throw("protocol", op + " with unknown flags " + Hex(flags));
    if (flags & kPeParent)
      Throw("protocol", op + ": page in parent image, but this server has no parent (answered has_parent=0)");
    if (!(flags & kPePresent))
      Throw("protocol", op + " without page data (lazy entry): a flat image cannot restore it");
    if (nr == 0 || nr > o_.maxEntryPages)
      Throw("protocol", op + " nr_pages " + std::to_string(nr) + " outside 1.." + std::to_string(o_.maxEntryPages));
    if (vaddr % page_) Throw("protocol", op + " vaddr " + Hex(vaddr) + " is not page aligned");
    if (vaddr >= kUserAddrLimit || nr * page_ > kUserAddrLimit - vaddr)
      Throw("protocol", op + " range " + Hex(vaddr) + "+" + std::to_string(nr) + " pages is beyond user space");
    // Restore walks each pagemap forward only (seek_pagemap), so entries must
    // ascend without overlap; CRIU's dump emits them in VMA order.
    if (vaddr < nextVaddr_)
      Throw("protocol",
            op + " at " + Hex(vaddr) + " overlaps or precedes the previous entry (ends " + Hex(nextVaddr_) + ")");
    if (nr > maxTotalPages_ - stats_.pages)
      Throw("nospace", "peer sends more than the " + std::to_string(o_.maxBytes >> 20) +
                           " MiB this server may write (" + Progress() + ", next entry " + std::to_string(nr) +
                           " pages)");
    nextVaddr_ = vaddr + nr * page_;

    // pagemap_entry, fields in number order as protobuf-c packs them:
    // vaddr=1, nr_pages=2 (4.2: compat_nr_pages), flags=4 (always present),
    // and for 4.2 also nr_pages=5, which is what 4.2 reads.
    std::string e;
    PutField(e, 1, vaddr);
    PutField(e, 2, nr);
    PutField(e, 4, flags);
    if (o_.headerSize == 32) PutField(e, 5, nr);
    PutRecord(pmbuf_, e);
    if (pmbuf_.size() >= kPagemapFlush) FlushPagemap();

    SplicePages(nr * page_, op);
    stats_.entries++;
    stats_.pages += nr;
    stats_.bytes += nr * page_;
  }

  // socket -> pipe -> pages file, in pipe-sized steps; the data never enters
  // user space. The pipe is drained completely before the next socket splice,
  // so neither splice can block on the pipe.
  void SplicePages(uint64_t len, const std::string& op) {
    uint64_t left = len;
    while (left > 0) {
      size_t chunk = size_t(std::min<uint64_t>(left, pipeSize_));
      ssize_t in = splice(sk_, nullptr, pipe_[1], nullptr, chunk, SPLICE_F_MOVE);
      if (in < 0 && errno == EINTR) continue;
      if (in < 0) NetError("splice");
      if (in == 0)
        Throw("network", "connection closed inside " + op + " data (" + std::to_string(len - left) + " of " +
                             std::to_string(len) + " bytes; " + Progress() + ")");
      size_t inPipe = size_t(in);
      while (inPipe > 0) {
        ssize_t out = splice(pipe_[0], nullptr, pagesfd_, nullptr, inPipe, SPLICE_F_MOVE);
        if (out < 0 && errno == EINTR) continue;
        if (out < 0) ThrowErrno("write pages for " + pagemapName_);
        if (out == 0) Throw("io", "splice to pages file wrote nothing");
        inPipe -= size_t(out);
      }
      left -= uint64_t(in);
    }
  }

  void FlushPagemap() {
    WriteAll(pmfd_, pmbuf_.data(), pmbuf_.size(), pagemapName_);
    pmbuf_.clear();
  }

  // Finish the open pagemap: write what is buffered, close both files and
  // check close() too (NFS-like file systems report write errors there).
  void CloseImage() {
    if (pmfd_ < 0) return;
    int pm = pmfd_, pg = pagesfd_;
    pmfd_ = pagesfd_ = -1;
    try {
      WriteAll(pm, pmbuf_.data(), pmbuf_.size(), pagemapName_);
    } catch (...) {
      close(pm);
      close(pg);
      throw;
    }
    pmbuf_.clear();
    int e1 = close(pg), e2 = close(pm);
    if (e1 < 0 || e2 < 0) ThrowErrno("close " + pagemapName_);
  }

  std::string Progress() const {
    return std::to_string(stats_.entries) + " entries, " + std::to_string(stats_.pages) + " pages received";
  }

  std::shared_ptr<SockState> st_;
  int sk_;
  std::string dirPath_;
  Options o_;
  uint64_t page_ = 4096, maxTotalPages_ = 0;
  bool isTcp_ = false;
  int dirfd_ = -1, pipe_[2] = {-1, -1};
  size_t pipeSize_ = 0;
  int pmfd_ = -1, pagesfd_ = -1;
  std::string pagemapName_, pmbuf_;
  uint64_t curDst_ = 0, nextVaddr_ = 0;
  uint32_t nextPagesId_ = kFirstPagesId;
  std::set<uint64_t> opened_;
  Stats stats_;
};

// What the server thread leaves for the JS thread.
struct Outcome {
  bool ok = false;
  Stats stats;
  Fail fail{"io", "no result"};
};

// The server thread's work (thread_job.h): serve until CLOSE, EOF or abort,
// then close the socket.
void Serve(const std::shared_ptr<SockState>& st, Outcome* out, std::string dir, Options o) {
  try {
    Session s(st, std::move(dir), o);
    out->stats = s.Run();
    out->ok = true;
  } catch (const Fail& f) {
    out->fail = f;
  } catch (const std::exception& e) {
    out->fail = Fail{"io", e.what()};
  } catch (...) {
    out->fail = Fail{"io", "unknown failure"};
  }
  // Close under the lock so abort() never shuts down a recycled fd number.
  std::lock_guard<std::mutex> g(st->mu);
  if (st->aborted && !out->ok) out->fail = Fail{"aborted", "aborted" + st->abortReason};
  close(st->fd);
  st->closed = true;
}

// The result as JS sees it, on the JS thread.
Napi::Value Settle(Napi::Env env, const Outcome& out) {
  if (!out.ok) {
    Napi::Error err = Napi::Error::New(env, "page server: " + out.fail.msg);
    err.Set("code", Napi::String::New(env, out.fail.code));
    throw err;
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("entries", Napi::Number::New(env, double(out.stats.entries)));
  r.Set("pages", Napi::Number::New(env, double(out.stats.pages)));
  r.Set("bytes", Napi::Number::New(env, double(out.stats.bytes)));
  Napi::Array imgs = Napi::Array::New(env, out.stats.images.size());
  for (size_t i = 0; i < out.stats.images.size(); i++) imgs.Set(uint32_t(i), out.stats.images[i]);
  r.Set("images", imgs);
  return r;
}

uint64_t OptU64(Napi::Object o, const char* k, uint64_t def, uint64_t max) {
  Napi::Value v = o.Get(k);
  if (v.IsUndefined()) return def;
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string(k) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > double(max) || d != double(uint64_t(d)))
    throw Napi::RangeError::New(o.Env(), std::string(k) + " out of range");
  return uint64_t(d);
}

bool IsStreamSocket(int fd) {
  int type = 0;
  socklen_t len = sizeof type;
  return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM;
}

Napi::Value ServePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsString() || !info[2].IsObject())
    throw Napi::TypeError::New(env, "servePages(fd, dir, { headerSize })");
  int fd = info[0].As<Napi::Number>().Int32Value();
  // Ownership passes only for a stream socket; anything else is left alone.
  if (fd < 0 || !IsStreamSocket(fd)) throw Napi::TypeError::New(env, "servePages: fd is not a stream socket");
  Options o;
  try {
    Napi::Object opts = info[2].As<Napi::Object>();
    o.headerSize = int(OptU64(opts, "headerSize", 0, 64));
    if (o.headerSize != 24 && o.headerSize != 32)
      throw Napi::RangeError::New(env, "headerSize must be 24 (CRIU <= 4.1) or 32 (CRIU >= 4.2)");
    o.maxEntryPages = OptU64(opts, "maxEntryPages", o.maxEntryPages, 1ull << 32);
    o.maxBytes = OptU64(opts, "maxBytes", 0, 1ull << 52);
    o.idleTimeoutMs = uint32_t(OptU64(opts, "idleTimeoutMs", 0, 1u << 30));
  } catch (...) {
    close(fd);  // we own it from here on, even on bad options
    throw;
  }

  // We own the fd now. Close-on-exec before returning to JS, so it cannot
  // leak into a child spawned next (criu, say); blocking, since it may come
  // from libuv, which set O_NONBLOCK on the shared file description.
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);

  auto st = std::make_shared<SockState>();
  st->fd = fd;
  auto out = std::make_shared<Outcome>();
  std::string dir = info[1].As<Napi::String>().Utf8Value();
  Napi::Promise promise;
  try {
    promise = ThreadJob::Start(
        env, "phaul-page-server", [st, out, dir, o] { Serve(st, out.get(), dir, o); },
        [out](Napi::Env env) { return Settle(env, *out); });
  } catch (...) {
    close(fd);
    throw;
  }

  Napi::Object handle = Napi::Object::New(env);
  handle.Set("done", promise);
  // abort(): wake the worker out of recv/splice; it then fails with "aborted".
  handle.Set("abort", Napi::Function::New(env, [st](const Napi::CallbackInfo& ci) {
               std::lock_guard<std::mutex> g(st->mu);
               if (st->closed || st->aborted) return;
               st->aborted = true;
               if (ci.Length() > 0 && ci[0].IsString()) st->abortReason = ": " + ci[0].As<Napi::String>().Utf8Value();
               shutdown(st->fd, SHUT_RDWR);
             }));
  return handle;
}

// Detach a socket from libuv: a blocking, close-on-exec duplicate the caller
// owns. (O_NONBLOCK lives in the shared file description, so this also makes
// the original blocking: destroy the net.Socket right after.)
Napi::Value DupStreamFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "dupStreamFd(fd)");
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (fd < 0 || !IsStreamSocket(fd)) throw Napi::TypeError::New(env, "dupStreamFd: fd is not a stream socket");
  int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (nfd < 0) throw Napi::Error::New(env, std::string("dup: ") + strerror(errno));
  int fl = fcntl(nfd, F_GETFL);
  if (fl >= 0) fcntl(nfd, F_SETFL, fl & ~O_NONBLOCK);
  return Napi::Number::New(env, nfd);
}

// A connected AF_UNIX stream pair, e.g. for `criu dump --ps-socket` on the
// same host (no port, no TCP_CORK stall) and for tests.
Napi::Value StreamSocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
    throw Napi::Error::New(env, std::string("socketpair: ") + strerror(errno));
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, sv[0]));
  a.Set(1u, Napi::Number::New(env, sv[1]));
  return a;
}

}  // namespace

void InitPageServer(Napi::Env env, Napi::Object exports) {
  exports.Set("servePages", Napi::Function::New(env, ServePages, "servePages"));
  exports.Set("dupStreamFd", Napi::Function::New(env, DupStreamFd, "dupStreamFd"));
  exports.Set("streamSocketPair", Napi::Function::New(env, StreamSocketPair, "streamSocketPair"));
}
}  // namespace phaul
