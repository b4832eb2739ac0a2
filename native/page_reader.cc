// process_vm_readv page reader (docs/DESIGN.md section 4: the simplest path,
// needs nothing injected into the target; /proc/PID/mem for what it cannot
// read) and its N-API binding. Reads run on the libuv pool: the event loop
// never waits for them.
#include "page_reader.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <memory>

#include "async_job.h"
#include "modules.h"

namespace phaul {
namespace pages {

static const uint64_t kPage = 4096;

static int64_t Now() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

bool PageIsZero(const uint8_t* p) {
  const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
  // 8 words at a time: one branch per cache line.
  for (size_t i = 0; i < kPage / 8; i += 8) {
    if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7]) return false;
  }
  return true;
}

static void AddMissing(std::vector<uint64_t>* m, uint64_t s, uint64_t e) {
  size_t n = m->size();
  if (n >= 2 && (*m)[n - 1] == s) {
    (*m)[n - 1] = e;
    return;
  }
  m->push_back(s);
  m->push_back(e);
}

bool ReadRanges(pid_t pid, const uint64_t* pairs, size_t n, uint8_t* buf, size_t buflen, bool zero_map,
                ReadResult* out) {
  int64_t t0 = Now();
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++) {
    uint64_t s = pairs[2 * i], e = pairs[2 * i + 1];
    if (e < s || (s | e) & (kPage - 1)) {
      out->reason = "failed";
      out->message = "readPages: ranges must be page-aligned [start, end) pairs";
      out->err = EINVAL;
      return false;
    }
    total += e - s;
  }
  if (total > buflen) {
    out->reason = "failed";
    out->message = "readPages: buffer too small for the ranges";
    out->err = EINVAL;
    return false;
  }

  // /proc/PID/mem, opened at the first page process_vm_readv cannot read.
  struct MemFd {
    int fd = -2;  // -2: not tried yet; -1: cannot be opened
    ~MemFd() {
      if (fd >= 0) close(fd);
    }
  } mem;
  std::vector<uint64_t> missing_at;  // buffer page indices of missing pages (for missing_map)

  // Cursor: range i, offset off into it; pos = where it lands in buf.
  size_t i = 0;
  uint64_t off = 0, pos = 0;
  std::vector<struct iovec> remote(IOV_MAX);
  while (i < n) {
    if (pairs[2 * i] + off >= pairs[2 * i + 1]) {
      i++;
      off = 0;
      continue;
    }
    // One call: up to IOV_MAX remote ranges into one contiguous local span.
    size_t cnt = 0;
    uint64_t want = 0;
    for (size_t j = i; j < n && cnt < remote.size(); j++) {
      uint64_t s = pairs[2 * j] + (j == i ? off : 0), e = pairs[2 * j + 1];
      if (s >= e) continue;
      remote[cnt].iov_base = reinterpret_cast<void*>(s);
      remote[cnt].iov_len = e - s;
      want += e - s;
      cnt++;
    }
    struct iovec local = {buf + pos, want};
    ssize_t got = process_vm_readv(pid, &local, 1, remote.data(), cnt, 0);
    out->calls++;
    if (got < 0) {
      int e = errno;
      if (e == EINTR) continue;
      if (e == ESRCH) {
        out->reason = "process-gone";
        out->message = "readPages: process " + std::to_string(pid) + " is gone";
        out->err = e;
        return false;
      }
      if (e != EFAULT && e != ENOMEM && e != EIO) {
        out->reason = "failed";
        out->message = std::string("process_vm_readv: ") + strerror(e);
        out->err = e;
        return false;
      }
      got = 0;
    }
    uint64_t done = uint64_t(got) & ~(kPage - 1);
    // Advance the cursor by `done` bytes.
    uint64_t adv = done;
    pos += done;
    while (adv > 0) {
      uint64_t left = pairs[2 * i + 1] - (pairs[2 * i] + off);
      if (adv < left) {
        off += adv;
        adv = 0;
      } else {
        adv -= left;
        i++;
        off = 0;
      }
    }
    if (done == want) continue;
    // The page under the cursor failed (the kernel stops at the first page it
    // cannot pin). Skip to a readable range start if needed, then read that
    // page through /proc/PID/mem, which reads what a mapping's protection
    // hides from process_vm_readv, and go on with process_vm_readv after it.
    // One page, not the rest of the range: reading on through /proc/PID/mem
    // made redis's frozen round (tracked ranges, uffd-wp) several times
    // slower in most runs (downtime ~250 -> ~800 ms; docs/BENCH.md).
    while (i < n && pairs[2 * i] + off >= pairs[2 * i + 1]) i++, off = 0;
    if (i >= n) break;
    uint64_t a = pairs[2 * i] + off;
    if (mem.fd == -2) {
      std::string path = "/proc/" + std::to_string(pid) + "/mem";
      mem.fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    }
    if (mem.fd >= 0) {
      ssize_t g = pread(mem.fd, buf + pos, kPage, off_t(a));
      out->calls++;
      if (g == ssize_t(kPage)) {
        out->forced_pages++;
        pos += kPage;
        off += kPage;
        continue;
      }
    }
    struct iovec l1 = {buf + pos, kPage}, r1 = {reinterpret_cast<void*>(a), kPage};
    ssize_t g1 = process_vm_readv(pid, &l1, 1, &r1, 1, 0);
    out->calls++;
    if (g1 != ssize_t(kPage)) {
      if (g1 < 0 && errno == ESRCH) {
        out->reason = "process-gone";
        out->message = "readPages: process " + std::to_string(pid) + " is gone";
        out->err = ESRCH;
        return false;
      }
      memset(buf + pos, 0, kPage);
      AddMissing(&out->missing, a, a + kPage);
      missing_at.push_back(pos / kPage);
    }
    pos += kPage;
    off += kPage;
  }
  out->bytes = pos;

  if (zero_map) {
    uint64_t pages = pos / kPage;
    out->zero_map.assign((pages + 7) / 8, 0);
    if (!missing_at.empty()) {
      out->missing_map.assign((pages + 7) / 8, 0);
      for (uint64_t p : missing_at) out->missing_map[p >> 3] |= uint8_t(1u << (p & 7));
    }
    auto missing = [&](uint64_t p) { return !out->missing_map.empty() && (out->missing_map[p >> 3] >> (p & 7)) & 1; };
    for (uint64_t p = 0; p < pages; p++) {
      if (!missing(p) && PageIsZero(buf + p * kPage)) {
        out->zero_map[p >> 3] |= uint8_t(1u << (p & 7));
        out->zero_pages++;
      }
    }
  }
  out->ns = Now() - t0;
  return true;
}

}  // namespace pages

// ======================================================================== N-API
namespace {

// readPages(pid, ranges: BigUint64Array of [start,end) pairs, buf: Uint8Array,
//           opts?: { offset?: number, zeroMap?: boolean })
//   -> Promise<{ bytes, missing: BigUint64Array, zeroMap: Uint8Array|null, missingMap: Uint8Array|null,
//                zeroPages, forcedPages, calls, ns }>
Napi::Value ReadPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsTypedArray())
    throw Napi::TypeError::New(env, "readPages(pid: number, ranges: BigUint64Array, buf: Uint8Array, opts?)");
  auto ta = info[1].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_biguint64_array) throw Napi::TypeError::New(env, "ranges must be a BigUint64Array");
  auto ranges = info[1].As<Napi::TypedArrayOf<uint64_t>>();
  if (ranges.ElementLength() % 2) throw Napi::TypeError::New(env, "ranges must hold [start, end) pairs");
  if (info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(env, "buf must be a Uint8Array or Buffer");
  auto buf = info[2].As<Napi::Uint8Array>();
  size_t offset = 0;
  bool zero_map = false;
  if (info.Length() > 3 && info[3].IsObject()) {
    auto o = info[3].As<Napi::Object>();
    if (o.Has("offset") && o.Get("offset").IsNumber()) offset = size_t(o.Get("offset").As<Napi::Number>().Int64Value());
    if (o.Has("zeroMap")) zero_map = o.Get("zeroMap").ToBoolean().Value();
  }
  if (offset > buf.ByteLength()) throw Napi::RangeError::New(env, "offset beyond the buffer");
  std::vector<uint64_t> pairs(ranges.Data(), ranges.Data() + ranges.ElementLength());
  struct Job {
    bool ok = false;
    pages::ReadResult r;
  };
  auto job = std::make_shared<Job>();
  pid_t pid = info[0].As<Napi::Number>().Int32Value();
  uint8_t* data = buf.Data() + offset;
  size_t len = buf.ByteLength() - offset;
  return AsyncJob::Run(
      env,
      [job, pid, pairs = std::move(pairs), data, len, zero_map] {
        job->ok = pages::ReadRanges(pid, pairs.data(), pairs.size() / 2, data, len, zero_map, &job->r);
      },
      [job, zero_map](Napi::Env env) -> Napi::Value {
        const pages::ReadResult& r = job->r;
        if (!job->ok) {
          Napi::Error e = Napi::Error::New(env, r.message);
          e.Set("reason", Napi::String::New(env, r.reason));
          e.Set("errno", Napi::Number::New(env, r.err));
          throw e;
        }
        auto o = Napi::Object::New(env);
        o.Set("bytes", Napi::Number::New(env, double(r.bytes)));
        auto ab = Napi::ArrayBuffer::New(env, r.missing.size() * 8);
        if (!r.missing.empty()) memcpy(ab.Data(), r.missing.data(), r.missing.size() * 8);
        o.Set("missing", Napi::TypedArrayOf<uint64_t>::New(env, r.missing.size(), ab, 0, napi_biguint64_array));
        if (zero_map) {
          auto zb = Napi::Uint8Array::New(env, r.zero_map.size());
          if (!r.zero_map.empty()) memcpy(zb.Data(), r.zero_map.data(), r.zero_map.size());
          o.Set("zeroMap", zb);
          o.Set("zeroPages", Napi::Number::New(env, double(r.zero_pages)));
        } else {
          o.Set("zeroMap", env.Null());
          o.Set("zeroPages", Napi::Number::New(env, 0));
        }
        if (!r.missing_map.empty()) {
          auto mb = Napi::Uint8Array::New(env, r.missing_map.size());
          memcpy(mb.Data(), r.missing_map.data(), r.missing_map.size());
          o.Set("missingMap", mb);
        } else {
          o.Set("missingMap", env.Null());
        }
        o.Set("forcedPages", Napi::Number::New(env, double(r.forced_pages)));
        o.Set("calls", Napi::Number::New(env, r.calls));
        o.Set("ns", Napi::Number::New(env, double(r.ns)));
        return o;
      },
      // The buffer being filled must outlive the read.
      {buf.As<Napi::Object>()});
}

}  // namespace

void InitPageReader(Napi::Env env, Napi::Object exports) {
  exports.Set("readPages", Napi::Function::New(env, ReadPages, "readPages"));
}

}  // namespace phaul
