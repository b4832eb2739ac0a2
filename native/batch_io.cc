// Pre-copy's data connections without JS in the data path: page batches
// (wire format in src/transport/page-batch.ts and docs/PROTOCOL.md) written
// straight from another process's memory, and read straight into buffers the
// caller provides. Each call runs on libuv's thread pool; one call at a time
// per object (the caller keeps order).
//
//   const w = new BatchConn(fd);           // source: fd is ours now (a dup of the data socket)
//   await w.sendPages(pid, round, pairs, buf);  // batches of at most buf's size: each read into buf
//                                               // (process_vm_readv), all-zero pages as zero ranges,
//                                               // one writev of header, ranges, data
//   await w.sendBuffers([head, payload]);  // a batch JS encoded (lz4)
//   const r = new BatchConn(fd);           // destination
//   const f = await r.read(buf);           // header, ranges, and the payload in buf
//   const f = await r.read(EMPTY);         // header and ranges only; then
//   await r.receivePayload(plan);          // the payload straight into the store's files
//   w.abort() / r.abort(): a call blocked on the peer fails at once; close() frees the descriptor.
//   w.setMacKey(k) / r.setMacKey(k): from now on every batch is followed by a 16-byte tag (below).
//
// Authentication of plain TCP connections: each batch (header, ranges and
// payload, in wire order) is the associated data of a ChaCha20-Poly1305
// (RFC 8439) encryption of nothing, i.e. a Poly1305 MAC under a one-time key
// derived from the connection's key and the batch's sequence number (the
// nonce: never reused under one key, so a batch cannot be replayed, dropped
// or moved without the next tag failing). The tag follows the payload. The
// key is the connection's own (derived from its handshake, one per data
// connection and direction); TLS connections need none. The receiver checks
// the tag before the batch counts as received; a raw payload then goes to
// the store through a small reused buffer instead of a splice (RecvToFile).
//
// Only the sizes a reader must trust before reading are checked here (magic,
// version, number of ranges, payload length); JS checks every field of what
// it gets (parseHeader, parseRanges) before it uses any of it.
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "async_job.h"
#include "modules.h"
#include "page_reader.h"

namespace phaul {
namespace {

const uint32_t kMagic = 0x42504650;  // "PFPB"
const uint8_t kVersion = 1;
const size_t kHeader = 32;
const size_t kRange = 16;
const uint32_t kMaxRanges = 65536;
const uint32_t kMaxRaw = 64u << 20;
const uint64_t kPage = 4096;

const size_t kTag = 16;

uint32_t Lz4WireBound(uint32_t n) { return 4 + n + n / 255 + 16; }

// The MAC of one direction of a connection (see the top of the file).
class BatchMac {
 public:
  explicit BatchMac(const uint8_t* key) : ctx_(EVP_CIPHER_CTX_new()) { memcpy(key_, key, sizeof key_); }
  ~BatchMac() {
    OPENSSL_cleanse(key_, sizeof key_);
    EVP_CIPHER_CTX_free(ctx_);
  }
  BatchMac(const BatchMac&) = delete;
  BatchMac& operator=(const BatchMac&) = delete;

  // Starts the next batch's MAC (nonce: 4 zero bytes, then the sequence number, little-endian).
  bool Begin() {
    uint8_t nonce[12] = {0};
    memcpy(nonce + 4, &seq_, 8);
    seq_++;
    open_ = true;
    return ctx_ && EVP_EncryptInit_ex(ctx_, EVP_chacha20_poly1305(), nullptr, key_, nonce) == 1;
  }
  bool Add(const uint8_t* p, size_t n) {
    while (n > 0) {
      int k = int(std::min<size_t>(n, 1 << 30)), outl = 0;
      if (EVP_EncryptUpdate(ctx_, nullptr, &outl, p, k) != 1) return false;
      p += k;
      n -= size_t(k);
    }
    return true;
  }
  bool Finish(uint8_t* tag) {
    uint8_t none[16];
    int outl = 0;
    open_ = false;
    return EVP_EncryptFinal_ex(ctx_, none, &outl) == 1 &&
           EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_AEAD_GET_TAG, int(kTag), tag) == 1;
  }
  // A batch was begun and its payload is still to come (read() left it on the connection).
  bool open() const { return open_; }

 private:
  uint8_t key_[32];
  uint64_t seq_ = 0;
  bool open_ = false;
  EVP_CIPHER_CTX* ctx_;
};

void Put32(uint8_t* p, uint32_t v) { memcpy(p, &v, 4); }  // little-endian hosts (x86_64, aarch64)
void Put64(uint8_t* p, uint64_t v) { memcpy(p, &v, 8); }
uint32_t Get32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

// A descriptor shared by the object and its running call; abort() shuts it
// down (a blocked call wakes up) and makes every later wait fail.
struct Conn {
  int fd;
  std::atomic<bool> aborted{false};
  // receivePayload's pipe (socket -> pipe -> file), made on first use.
  int pipe_r = -1, pipe_w = -1;
  // Set by setMacKey: every batch carries a tag.
  std::unique_ptr<BatchMac> mac;
  // receivePayload's buffer when batches carry MACs (made on first use, then reused: fresh memory is slow to fill).
  std::vector<uint8_t> chunk;
  size_t pipe_size = 0;
  explicit Conn(int f) : fd(f) {}
  ~Conn() {
    if (fd >= 0) close(fd);
    if (pipe_r >= 0) close(pipe_r);
    if (pipe_w >= 0) close(pipe_w);
  }
};

struct IoError {
  std::string reason = "network";  // network | protocol | process-gone | failed
  std::string message;
};

// Waits until fd is ready for `events`; false (with err) when aborted.
bool Wait(Conn* c, short events, IoError* err) {
  for (;;) {
    if (c->aborted.load()) {
      err->message = "data connection aborted";
      return false;
    }
    struct pollfd p = {c->fd, events, 0};
    int r = poll(&p, 1, 200);
    if (r < 0 && errno != EINTR) {
      err->message = std::string("poll: ") + strerror(errno);
      return false;
    }
    if (r > 0) return true;
  }
}

// After a socket call failed: true when it is worth another try (interrupted,
// or it would block and the socket is ready now); false with err set.
bool RetryAfter(Conn* c, short events, IoError* err) {
  if (errno == EINTR) return true;
  if (errno == EAGAIN || errno == EWOULDBLOCK) return Wait(c, events, err);
  err->message = std::string("data connection: ") + strerror(errno);
  return false;
}

// Writes every byte of iov (modified as it goes).
bool WriteAll(Conn* c, std::vector<struct iovec>* iov, IoError* err) {
  size_t i = 0;
  while (i < iov->size()) {
    size_t n = std::min<size_t>(iov->size() - i, IOV_MAX);
    struct msghdr m = {};
    m.msg_iov = iov->data() + i;
    m.msg_iovlen = n;
    ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL);
    if (w < 0) {
      if (!RetryAfter(c, POLLOUT, err)) return false;
      continue;
    }
    size_t left = size_t(w);
    while (left && i < iov->size()) {
      struct iovec& v = (*iov)[i];
      if (left >= v.iov_len) {
        left -= v.iov_len;
        i++;
      } else {
        v.iov_base = static_cast<uint8_t*>(v.iov_base) + left;
        v.iov_len -= left;
        left = 0;
      }
    }
  }
  return true;
}

// Reads exactly n bytes. *eof (when given) is set if the peer ended the
// stream before the first byte: a clean end between batches.
bool ReadAll(Conn* c, uint8_t* p, size_t n, IoError* err, bool* eof = nullptr) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = recv(c->fd, p + got, n - got, 0);
    if (r > 0) {
      got += size_t(r);
      continue;
    }
    if (r == 0) {
      if (got == 0 && eof) {
        *eof = true;
        return true;
      }
      err->message = "data connection ended inside a page batch";
      return false;
    }
    if (!RetryAfter(c, POLLIN, err)) return false;
  }
  return true;
}

bool MacFailed(IoError* err, const char* what) {
  err->reason = "failed";
  err->message = std::string("page batch authentication: ") + what;
  return false;
}

// Adds iov's bytes to a new MAC and appends the tag (in *tag) to iov.
bool SealIov(BatchMac* mac, std::vector<struct iovec>* iov, uint8_t* tag, IoError* err) {
  if (!mac->Begin()) return MacFailed(err, "cannot start the MAC");
  for (const struct iovec& v : *iov)
    if (!mac->Add(static_cast<const uint8_t*>(v.iov_base), v.iov_len)) return MacFailed(err, "MAC update failed");
  if (!mac->Finish(tag)) return MacFailed(err, "MAC failed");
  iov->push_back({tag, kTag});
  return true;
}

// Reads the batch's tag from the connection and compares it with ours.
bool CheckTag(Conn* c, IoError* err) {
  uint8_t want[kTag], got[kTag];
  if (!c->mac->Finish(want)) return MacFailed(err, "MAC failed");
  if (!ReadAll(c, got, kTag, err)) return false;
  if (CRYPTO_memcmp(want, got, kTag) != 0) {
    err->reason = "protocol";
    err->message =
        "page batch failed authentication (its MAC does not match: altered on the way, or not from the source)";
    return false;
  }
  return true;
}

Napi::Error ToError(Napi::Env env, const IoError& e) {
  Napi::Error x = Napi::Error::New(env, e.message);
  x.Set("reason", Napi::String::New(env, e.reason));
  return x;
}

// ---- source

struct SendPagesJob {
  std::shared_ptr<Conn> c;
  uint32_t pid = 0, round = 0;
  std::vector<uint64_t> pairs;
  uint8_t* data = nullptr;
  size_t len = 0;
  uint64_t pages = 0, zero_pages = 0, missing_pages = 0, forced_pages = 0, wire = 0, batches = 0;
  int64_t read_ns = 0;
  IoError err;
  bool ok = true;
};

// Reads n pairs (at most j->len bytes) into the buffer, then writes one raw
// batch: runs of all-zero pages as zero ranges, the rest as data straight
// from the buffer. Adds to j's totals.
bool SendBatch(SendPagesJob* j, const uint64_t* pairs, size_t n) {
  pages::ReadResult rr;
  if (!pages::ReadRanges(j->pid, pairs, n, j->data, j->len, true, &rr)) {
    j->err.reason = rr.reason;
    j->err.message = rr.message;
    return false;
  }
  j->read_ns += rr.ns;
  std::vector<uint8_t> head(kHeader, 0);
  std::vector<struct iovec> iov(1);
  uint64_t page = 0, raw = 0;
  uint32_t nranges = 0;
  auto zero = [&](uint64_t p) { return ((rr.zero_map[p >> 3] >> (p & 7)) & 1) != 0; };
  // A page that could not be read (unmapped since the scan) goes out neither
  // as data nor as zeros: the store keeps what it had, and a page it never
  // had stays missing there (a restore that needs it fails; none runs on zeros).
  auto missing = [&](uint64_t p) { return !rr.missing_map.empty() && ((rr.missing_map[p >> 3] >> (p & 7)) & 1) != 0; };
  auto kind = [&](uint64_t p) { return missing(p) ? 2 : zero(p) ? 1 : 0; };
  for (size_t i = 0; i < n; i++) {
    uint64_t start = pairs[2 * i], np = (pairs[2 * i + 1] - start) / kPage;
    for (uint64_t k = 0; k < np;) {
      int what = kind(page + k);
      bool z = what == 1;
      uint64_t run = 1;
      while (k + run < np && kind(page + k + run) == what && run < 0xffffffffu) run++;
      if (what == 2) {
        j->missing_pages += run;
        k += run;
        continue;
      }
      uint8_t r[kRange];
      Put64(r, start + k * kPage);
      Put32(r + 8, uint32_t(run));
      Put32(r + 12, z ? 1 : 0);
      head.insert(head.end(), r, r + kRange);
      nranges++;
      if (!z) {
        uint8_t* from = j->data + (page + k) * kPage;
        struct iovec& last = iov.back();
        if (iov.size() >= 2 && static_cast<uint8_t*>(last.iov_base) + last.iov_len == from)
          last.iov_len += run * kPage;
        else
          iov.push_back({from, size_t(run * kPage)});
        raw += run * kPage;
      }
      k += run;
    }
    page += np;
  }
  j->pages += page;
  j->zero_pages += rr.zero_pages;
  j->forced_pages += rr.forced_pages;
  if (nranges == 0) return true;  // nothing to send
  if (nranges > kMaxRanges || raw > kMaxRaw) {
    j->err.reason = "failed";
    j->err.message =
        "sendPages: batch too large (" + std::to_string(nranges) + " ranges, " + std::to_string(raw) + " bytes)";
    return false;
  }
  uint8_t* h = head.data();
  Put32(h, kMagic);
  h[4] = kVersion;
  Put32(h + 8, j->pid);
  Put32(h + 12, j->round);
  Put32(h + 16, nranges);
  Put32(h + 20, uint32_t(raw));
  Put32(h + 24, uint32_t(raw));
  iov[0] = {head.data(), head.size()};
  uint64_t wire = head.size() + raw;
  uint8_t tag[kTag];
  if (j->c->mac) {
    if (!SealIov(j->c->mac.get(), &iov, tag, &j->err)) return false;
    wire += kTag;
  }
  if (!WriteAll(j->c.get(), &iov, &j->err)) return false;
  j->wire += wire;
  j->batches++;
  return true;
}

// The pairs as consecutive batches of at most the buffer's size each (a pair
// may be split between two), each read and written before the next is read:
// one call per many batches, so JS and the thread pool are entered once for
// all of them.
void RunSendPages(SendPagesJob* j) {
  const uint64_t cap = j->len / kPage * kPage;
  if (cap == 0) {
    j->err.reason = "failed";
    j->err.message = "sendPages: the buffer holds no page";
    j->ok = false;
    return;
  }
  for (size_t k = 0; k + 1 < j->pairs.size(); k += 2)
    if (j->pairs[k] > j->pairs[k + 1] || (j->pairs[k] | j->pairs[k + 1]) % kPage) {
      j->err.reason = "failed";
      j->err.message = "sendPages: pairs must be page-aligned [start, end) pairs";
      j->ok = false;
      return;
    }
  std::vector<uint64_t> piece;
  size_t i = 0;
  uint64_t at = j->pairs.empty() ? 0 : j->pairs[0];
  while (i + 1 < j->pairs.size()) {
    piece.clear();
    uint64_t used = 0;
    while (i + 1 < j->pairs.size() && used < cap) {
      uint64_t end = j->pairs[i + 1], take = std::min(end - at, cap - used);
      piece.push_back(at);
      piece.push_back(at + take);
      used += take;
      at += take;
      if (at == end && (i += 2) + 1 < j->pairs.size()) at = j->pairs[i];
    }
    if (!SendBatch(j, piece.data(), piece.size() / 2)) return void(j->ok = false);
  }
}

// ---- destination

struct ReadBatchJob {
  std::shared_ptr<Conn> c;
  uint8_t* data = nullptr;
  size_t len = 0;
  bool payload_only = false;
  uint32_t payload_len = 0;
  std::vector<uint8_t> head, ranges;
  IoError err;
  bool ok = true, eof = false, bad_header = false, in_buf = false;
};

// read(): header, ranges, and the payload into the buffer when it fits;
// readPayload(): just the payload.
void RunReadBatch(ReadBatchJob* j) {
  Conn* c = j->c.get();
  if (j->payload_only) {
    if (j->payload_len > j->len) {
      j->err.reason = "failed";
      j->err.message = "readPayload: buffer too small";
      j->ok = false;
      return;
    }
    j->ok = ReadAll(c, j->data, j->payload_len, &j->err);
    if (j->ok && c->mac && c->mac->open())
      j->ok = c->mac->Add(j->data, j->payload_len) ? CheckTag(c, &j->err) : MacFailed(&j->err, "MAC update failed");
    return;
  }
  j->head.resize(kHeader);
  if (!ReadAll(c, j->head.data(), kHeader, &j->err, &j->eof)) return void(j->ok = false);
  if (j->eof) return;
  const uint8_t* h = j->head.data();
  uint32_t nranges = Get32(h + 16), raw = Get32(h + 20);
  j->payload_len = Get32(h + 24);
  if (Get32(h) != kMagic || h[4] != kVersion || nranges < 1 || nranges > kMaxRanges || raw > kMaxRaw ||
      j->payload_len > Lz4WireBound(kMaxRaw)) {
    // JS names exactly what is wrong (parseHeader); no byte more is read.
    j->bad_header = true;
    return;
  }
  j->ranges.resize(size_t(nranges) * kRange);
  if (!ReadAll(c, j->ranges.data(), j->ranges.size(), &j->err)) return void(j->ok = false);
  BatchMac* mac = c->mac.get();
  if (mac && !(mac->Begin() && mac->Add(j->head.data(), kHeader) && mac->Add(j->ranges.data(), j->ranges.size())))
    return void(j->ok = MacFailed(&j->err, "MAC update failed"));
  if (j->payload_len <= j->len) {
    if (!ReadAll(c, j->data, j->payload_len, &j->err)) return void(j->ok = false);
    j->in_buf = true;
    if (mac && !(mac->Add(j->data, j->payload_len) ? CheckTag(c, &j->err) : MacFailed(&j->err, "MAC update failed")))
      return void(j->ok = false);
  }
}

// ---- destination, straight into the store

// One piece of a payload, in wire order: `len` bytes for file `fd` at `pos`,
// or, with fd < 0, bytes to read and drop (pages older than the store holds).
struct Segment {
  int fd;
  uint64_t pos, len;
};

bool MakePipe(Conn* c, IoError* err) {
  if (c->pipe_r >= 0) return true;
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) {
    err->reason = "failed";
    err->message = std::string("pipe: ") + strerror(errno);
    return false;
  }
  c->pipe_r = p[0];
  c->pipe_w = p[1];
  // 1 MiB when the limits allow (fewer splice calls), else what we get.
  for (long sz = 1 << 20; sz >= 4096; sz /= 2)
    if (fcntl(p[1], F_SETPIPE_SZ, sz) >= 0) break;
  int got = fcntl(p[1], F_GETPIPE_SZ);
  c->pipe_size = got > 0 ? size_t(got) : 65536;
  return true;
}

// socket -> pipe -> file at pos: the bytes never enter user space (one
// kernel copy, into the file's pages). The pipe is drained before the next
// socket splice, so neither side blocks on it.
bool SpliceToFile(Conn* c, const Segment& s, IoError* err) {
  loff_t pos = loff_t(s.pos);
  uint64_t left = s.len;
  while (left > 0) {
    size_t chunk = size_t(std::min<uint64_t>(left, c->pipe_size));
    ssize_t in = splice(c->fd, nullptr, c->pipe_w, nullptr, chunk, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (in < 0) {
      if (!RetryAfter(c, POLLIN, err)) return false;
      continue;
    }
    if (in == 0) {
      err->message = "data connection ended inside a page batch";
      return false;
    }
    size_t in_pipe = size_t(in);
    while (in_pipe > 0) {
      ssize_t out = splice(c->pipe_r, nullptr, s.fd, &pos, in_pipe, SPLICE_F_MOVE);
      if (out < 0 && errno == EINTR) continue;
      if (out <= 0) {
        err->reason = "failed";
        err->message = std::string("page store write failed: ") + (out < 0 ? strerror(errno) : "nothing written");
        return false;
      }
      in_pipe -= size_t(out);
    }
    left -= uint64_t(in);
  }
  return true;
}

// With a MAC the payload must pass through user space anyway: it is read in
// chunks small enough to stay in the CPU's cache, added to the MAC while
// there, and written to the file at pos (two copies, each cache-hot; reading
// spliced pages back from the file for the MAC took several times longer:
// they were cold by then).
bool RecvToFile(Conn* c, const Segment& s, IoError* err) {
  if (c->chunk.empty()) c->chunk.resize(256 << 10);
  uint64_t pos = s.pos, left = s.len;
  while (left > 0) {
    size_t n = size_t(std::min<uint64_t>(left, c->chunk.size()));
    if (!ReadAll(c, c->chunk.data(), n, err)) return false;
    if (!c->mac->Add(c->chunk.data(), n)) return MacFailed(err, "MAC update failed");
    for (size_t done = 0; done < n;) {
      ssize_t w = pwrite(s.fd, c->chunk.data() + done, n - done, off_t(pos + done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        err->reason = "failed";
        err->message = std::string("page store write failed: ") + (w < 0 ? strerror(errno) : "nothing written");
        return false;
      }
      done += size_t(w);
    }
    pos += n;
    left -= n;
  }
  return true;
}

// Reads and drops len bytes (counted by the batch's MAC when there is one).
bool Discard(Conn* c, uint64_t len, IoError* err) {
  uint8_t scratch[65536];
  while (len > 0) {
    size_t n = size_t(std::min<uint64_t>(len, sizeof scratch));
    if (!ReadAll(c, scratch, n, err)) return false;
    if (c->mac && c->mac->open() && !c->mac->Add(scratch, n)) return MacFailed(err, "MAC update failed");
    len -= n;
  }
  return true;
}

struct ReceivePayloadJob {
  std::shared_ptr<Conn> c;
  std::vector<Segment> segs;
  IoError err;
  bool ok = true;
};

void RunReceivePayload(ReceivePayloadJob* j) {
  Conn* c = j->c.get();
  bool mac = c->mac && c->mac->open();
  if (!mac && !MakePipe(c, &j->err)) return void(j->ok = false);
  for (const Segment& s : j->segs) {
    j->ok = s.fd < 0 ? Discard(c, s.len, &j->err) : mac ? RecvToFile(c, s, &j->err) : SpliceToFile(c, s, &j->err);
    if (!j->ok) return;
  }
  if (mac) j->ok = CheckTag(c, &j->err);
}

Napi::Value ReadBatchResult(Napi::Env env, const ReadBatchJob& j) {
  if (!j.ok) throw ToError(env, j.err);
  auto o = Napi::Object::New(env);
  if (j.payload_only) return o;
  if (j.eof) {
    o.Set("end", Napi::Boolean::New(env, true));
    return o;
  }
  o.Set("head", Napi::Buffer<uint8_t>::Copy(env, j.head.data(), j.head.size()));
  if (j.bad_header) return o;
  o.Set("ranges", Napi::Buffer<uint8_t>::Copy(env, j.ranges.data(), j.ranges.size()));
  o.Set("payloadLen", Napi::Number::New(env, j.payload_len));
  // false: the payload did not fit and is still on the connection (readPayload).
  o.Set("inBuffer", Napi::Boolean::New(env, j.in_buf));
  return o;
}

// ---- the JS classes

class BatchConn : public Napi::ObjectWrap<BatchConn> {
 public:
  static Napi::Function Define(Napi::Env env, const char* name) {
    return DefineClass(
        env, name,
        {InstanceMethod("sendPages", &BatchConn::SendPages), InstanceMethod("sendBuffers", &BatchConn::SendBuffers),
         InstanceMethod("read", &BatchConn::Read), InstanceMethod("readPayload", &BatchConn::ReadPayload),
         InstanceMethod("receivePayload", &BatchConn::ReceivePayload),
         InstanceMethod("setMacKey", &BatchConn::SetMacKey), InstanceMethod("abort", &BatchConn::Abort),
         InstanceMethod("close", &BatchConn::Close)});
  }

  // new BatchConn(fd): takes ownership of fd.
  BatchConn(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BatchConn>(info) {
    if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "expected a descriptor");
    c_ = std::make_shared<Conn>(info[0].As<Napi::Number>().Int32Value());
  }

 private:
  std::shared_ptr<Conn> Live(Napi::Env env) {
    if (!c_ || c_->fd < 0) throw Napi::Error::New(env, "data connection is closed");
    return c_;
  }

  // sendPages(pid, round, pairs: BigUint64Array, buf: Uint8Array)
  //   -> Promise<{ batches, pages, zeroPages, missingPages, forcedPages, wireBytes, readNs }>
  Napi::Value SendPages(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 4 || !info[2].IsTypedArray() ||
        info[2].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array || !info[3].IsTypedArray() ||
        info[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw Napi::TypeError::New(env, "sendPages(pid, round, pairs: BigUint64Array, buf: Uint8Array)");
    auto pairs = info[2].As<Napi::TypedArrayOf<uint64_t>>();
    if (pairs.ElementLength() % 2) throw Napi::TypeError::New(env, "pairs must hold [start, end) pairs");
    auto buf = info[3].As<Napi::Uint8Array>();
    auto j = std::make_shared<SendPagesJob>();
    j->c = Live(env);
    j->pid = info[0].As<Napi::Number>().Uint32Value();
    j->round = info[1].As<Napi::Number>().Uint32Value();
    j->pairs.assign(pairs.Data(), pairs.Data() + pairs.ElementLength());
    j->data = buf.Data();
    j->len = buf.ByteLength();
    return AsyncJob::Run(
        env, [j] { RunSendPages(j.get()); },
        [j](Napi::Env env) -> Napi::Value {
          if (!j->ok) {
            // The batches before the failure were written whole: the caller counts them.
            Napi::Error e = ToError(env, j->err);
            e.Set("batches", Napi::Number::New(env, double(j->batches)));
            throw e;
          }
          auto o = Napi::Object::New(env);
          o.Set("batches", Napi::Number::New(env, double(j->batches)));
          o.Set("pages", Napi::Number::New(env, double(j->pages)));
          o.Set("zeroPages", Napi::Number::New(env, double(j->zero_pages)));
          o.Set("missingPages", Napi::Number::New(env, double(j->missing_pages)));
          o.Set("forcedPages", Napi::Number::New(env, double(j->forced_pages)));
          o.Set("wireBytes", Napi::Number::New(env, double(j->wire)));
          o.Set("readNs", Napi::Number::New(env, double(j->read_ns)));
          return o;
        },
        {buf});
  }

  // sendBuffers(bufs: Uint8Array[]) -> Promise<void>
  Napi::Value SendBuffers(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsArray()) throw Napi::TypeError::New(env, "sendBuffers(bufs: Uint8Array[])");
    auto a = info[0].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++)
      if (!a.Get(i).IsTypedArray()) throw Napi::TypeError::New(env, "sendBuffers: every element must be a Uint8Array");
    struct Job {
      std::shared_ptr<Conn> c;
      std::vector<struct iovec> iov;
      uint8_t tag[kTag];
      IoError err;
      bool ok = true;
    };
    auto j = std::make_shared<Job>();
    j->c = Live(env);
    for (uint32_t i = 0; i < a.Length(); i++) {
      auto b = a.Get(i).As<Napi::Uint8Array>();
      if (b.ByteLength()) j->iov.push_back({b.Data(), b.ByteLength()});
    }
    return AsyncJob::Run(
        env,
        [j] {
          j->ok = (!j->c->mac || SealIov(j->c->mac.get(), &j->iov, j->tag, &j->err)) &&
                  WriteAll(j->c.get(), &j->iov, &j->err);
        },
        [j](Napi::Env env) -> Napi::Value {
          if (!j->ok) throw ToError(env, j->err);
          return env.Undefined();
        },
        {a});
  }

  // read(buf) -> Promise<{ end: true } | { head } (bad header) | { head, ranges, payloadLen, inBuffer }>
  Napi::Value Read(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsTypedArray()) throw Napi::TypeError::New(env, "read(buf: Uint8Array)");
    return StartRead(env, info[0].As<Napi::Uint8Array>(), false, 0);
  }

  // readPayload(buf, len) -> Promise<{}>: the payload read() left on the connection.
  Napi::Value ReadPayload(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsNumber())
      throw Napi::TypeError::New(env, "readPayload(buf, len)");
    return StartRead(env, info[0].As<Napi::Uint8Array>(), true, info[1].As<Napi::Number>().Uint32Value());
  }

  // receivePayload(plan: Float64Array of [fd, pos, len] triples) -> Promise<{}>:
  // the payload read() left on the connection, piece by piece into the files
  // (fd -1: read and dropped). The caller's plan covers the payload exactly.
  Napi::Value ReceivePayload(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
      throw Napi::TypeError::New(env, "receivePayload(plan: Float64Array)");
    auto plan = info[0].As<Napi::Float64Array>();
    if (plan.ElementLength() % 3) throw Napi::TypeError::New(env, "receivePayload: plan holds [fd, pos, len] triples");
    auto j = std::make_shared<ReceivePayloadJob>();
    j->c = Live(env);
    for (size_t i = 0; i < plan.ElementLength(); i += 3) {
      double fd = plan[i], pos = plan[i + 1], len = plan[i + 2];
      if (!(fd >= -1 && fd < INT_MAX && pos >= 0 && pos < 9.0e15 && len >= 0 && len < 9.0e15))
        throw Napi::TypeError::New(env, "receivePayload: bad plan entry");
      if (len > 0) j->segs.push_back({int(fd), uint64_t(pos), uint64_t(len)});
    }
    return AsyncJob::Run(
        env, [j] { RunReceivePayload(j.get()); },
        [j](Napi::Env env) -> Napi::Value {
          if (!j->ok) throw ToError(env, j->err);
          return Napi::Object::New(env);
        });
  }

  Napi::Value StartRead(Napi::Env env, Napi::Uint8Array buf, bool payload_only, uint32_t payload_len) {
    auto j = std::make_shared<ReadBatchJob>();
    j->c = Live(env);
    j->data = buf.Data();
    j->len = buf.ByteLength();
    j->payload_only = payload_only;
    j->payload_len = payload_len;
    return AsyncJob::Run(
        env, [j] { RunReadBatch(j.get()); }, [j](Napi::Env env) { return ReadBatchResult(env, *j); }, {buf});
  }

  // setMacKey(key: 32 bytes): before the first batch; every batch from then on carries a tag.
  Napi::Value SetMacKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
        info[0].As<Napi::Uint8Array>().ByteLength() != 32)
      throw Napi::TypeError::New(env, "setMacKey(key: 32 bytes)");
    Live(env)->mac = std::make_unique<BatchMac>(info[0].As<Napi::Uint8Array>().Data());
    return env.Undefined();
  }

  Napi::Value Abort(const Napi::CallbackInfo& info) {
    if (c_ && c_->fd >= 0 && !c_->aborted.exchange(true)) shutdown(c_->fd, SHUT_RDWR);
    return info.Env().Undefined();
  }

  // The descriptor closes once no call uses it any more.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (c_) {
      if (!c_->aborted.exchange(true) && c_->fd >= 0) shutdown(c_->fd, SHUT_RDWR);
      c_.reset();
    }
    return info.Env().Undefined();
  }

  std::shared_ptr<Conn> c_;
};

}  // namespace

void InitBatchIo(Napi::Env env, Napi::Object exports) { exports.Set("BatchConn", BatchConn::Define(env, "BatchConn")); }

}  // namespace phaul
