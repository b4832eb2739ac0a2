#!/usr/bin/env bash
# Brings a fresh Debian 12 machine to a working phaul-fast checkout, idempotently:
# Debian packages, a CRIU that passes `criu check`, the sysctls the engine needs,
# npm dependencies, the native addon, the TypeScript build and the test workloads.
# Run from an installed package (`npx phaul-fast setup`), it stops after the addon.
# When everything is already in place it only checks, in a few seconds.
#
#   bash scripts/setup.sh [--quiet] [--force-criu]
#
# CRIU: Debian 12's criu 3.17 fails on kernels >= 6.13 (vDSO layout). We build
# CRIU 4.2.1 from Debian's source package (forky/sid) into .criu/ (git-ignored)
# unless a system CRIU >= 4.2 with libcriu already passes `criu check`.
# Why 4.2.1 and not trixie's 4.1.1: 4.1.1 passes `criu check` here but cannot
# dump any TCP socket on this kernel (getsockopt(SO_PASSSEC) is refused for
# inet sockets since Linux 6.14; 4.2 only asks unix sockets). The pinned sha256
# makes the build reproducible; see docs/SETUP.md for what to do when the
# archive moves on.
set -euo pipefail

QUIET=0
FORCE_CRIU=0
for a in "$@"; do
  case "$a" in
    --quiet) QUIET=1 ;;
    --force-criu) FORCE_CRIU=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown option $a" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
say() { [ "$QUIET" = 1 ] || echo "setup: $*"; }
loud() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

CRIU_VERSION=4.2.1
CRIU_MIN=4.2
CRIU_SUITES="forky sid"
CRIU_ORIG_SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
PREFIX="$ROOT/.criu"
CACHE="$ROOT/.cache"

[ "$(uname -s)" = Linux ] || die "phaul-fast needs Linux"
[ "$(id -u)" = 0 ] || die "run as root: CRIU, ptrace of other processes and apt need it"

# ---------------------------------------------------------------- Debian packages
PKGS=(
  # CRIU build and runtime
  libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler
  libnl-3-dev libnet1-dev libcap-dev libnftables-dev libbsd-dev libgnutls28-dev
  uuid-dev pkgconf python3-protobuf xz-utils dpkg-dev
  # two-host tests, network lock, addon build
  iproute2 nftables g++ make python3 util-linux procps openssl
  # the benchmark's real applications (bench/workloads/memcached.ts, redis.ts); npm run lint's C++ half
  memcached redis-server clang-format
  # fuzzing the native page server with libFuzzer (scripts/fuzz.sh)
  clang libclang-rt-14-dev
  # containers: the runtime, and a registry-free rootfs (busybox-static plus our static workloads)
  runc busybox-static libc6-dev
  # podman containers (migrate --runtime podman, the bench's podman:export); podman drives runc through conmon
  podman
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  loud "installing Debian packages: ${missing[*]}"
  apt-get update -qq >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
fi

# ---------------------------------------------------------------- CRIU
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

criu_ok() { # $1 = criu binary, $2 = exact version wanted (optional)
  local v
  v=$("$1" --version 2>/dev/null | awk '/^Version:/{print $2}') || return 1
  [ -n "$v" ] && version_ge "$v" "$CRIU_MIN" && { [ -z "${2:-}" ] || [ "$v" = "$2" ]; } && "$1" check >/dev/null 2>&1
}

# The apt source URI is taken from the machine's own configuration, never written here.
debian_uri() {
  local f u
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    u=$(awk 'tolower($1)=="uris:"{print $2; exit}' "$f")
    case "$u" in */debian|*/debian/) echo "${u%/}"; return 0 ;; esac
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    u=$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' "$f")
    case "$u" in */debian|*/debian/) echo "${u%/}"; return 0 ;; esac
  done
  return 1
}

fetch_criu_source() {
  local tarball="$CACHE/criu_${CRIU_VERSION}.orig.tar.xz"
  if [ -f "$tarball" ] && echo "$CRIU_ORIG_SHA256  $tarball" | sha256sum -c --quiet 2>/dev/null; then
    echo "$tarball"; return 0
  fi
  local uri tmp
  uri=$(debian_uri) || die "no Debian archive found in /etc/apt/sources.list*; cannot fetch CRIU's source"
  tmp=$(mktemp -d)
  mkdir -p "$tmp/parts" "$tmp/lists/partial" "$CACHE"
  cat > "$tmp/parts/criu-src.sources" <<EOF
Types: deb-src
URIs: $uri
Suites: $CRIU_SUITES
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  local A=(-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$tmp/parts"
           -o "Dir::State::Lists=$tmp/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
           -o APT::Sandbox::User=root)
  apt-get "${A[@]}" update -qq >/dev/null 2>&1 || die "apt-get update for the source index ($CRIU_SUITES) failed"
  # The .debian.tar.xz of a suite that moved on can 404; only the upstream tarball is needed.
  (cd "$tmp" && apt-get "${A[@]}" source --download-only "criu=${CRIU_VERSION}-1" >/dev/null 2>&1) || true
  [ -f "$tmp/criu_${CRIU_VERSION}.orig.tar.xz" ] || die "could not download criu_${CRIU_VERSION}.orig.tar.xz from Debian ($CRIU_SUITES)"
  echo "$CRIU_ORIG_SHA256  $tmp/criu_${CRIU_VERSION}.orig.tar.xz" | sha256sum -c --quiet \
    || die "criu_${CRIU_VERSION}.orig.tar.xz has an unexpected sha256"
  mv "$tmp/criu_${CRIU_VERSION}.orig.tar.xz" "$tarball"
  rm -rf "$tmp"
  echo "$tarball"
}

# What we change in the CRIU we build (recorded in $PREFIX/patches; a
# build without them is rebuilt). Two are in its lazy dump, whose memory walk is
# most of a large hybrid switchover (docs/BENCH.md "CRIU's lazy dump at 4 GiB"):
# - lazy-iovs: CRIU copied its iovec array into the parasite's arguments sized
#   for every private page of the tree (16 bytes a page) instead of the
#   iovecs it filled (a few per pipe): at 4 GiB, 16 MiB of fresh shared memory
#   faulted in while the tree is frozen, ~110 ms of CPU. Copying only the
#   filled ones is what the parasite reads (its offsets stop there).
# - lazy-unpinned: with CRIU_LAZY_PAGES_UNPINNED=1 in its environment (set by
#   src/criu/lazy-dump.ts only), a lazy dump does not have its parasite
#   vmsplice every lazy page into pipes (~100 ms of the frozen tree's CPU at
#   4 GiB): those pipes are read only by a lazy-pages client asking CRIU's
#   page server for pages, and we never do (our store holds every page; we
#   only send the page server's CLOSE). The images are the same: CRIU writes
#   lazy entries to the pagemap without reading their pipes.
# - kdat-magic: not a change of CRIU's code: the build's SOURCE_DATE_EPOCH is
#   the tarball's own date. CRIU stamps its kernel-probe cache (/run/criu.kdat,
#   src/criu/kerndat-cache.ts) with its build time and deletes a cache of any
#   other build as stale; every build then probes again (100-300 ms) and,
#   /run being no tmpfs here, cannot save: two checkouts (or a checkout and
#   any other CRIU build on the host) deleted each other's cache, and a
#   destination's restore probed inside the pause. Builds of the same source
#   now share the stamp (their cache layout is the same).
# - pagemap-anon: CRIU asks PAGEMAP_SCAN to leave out file-backed pages in
#   every mapping, and for that the kernel looks up the struct page of every
#   present page (1 GiB resident: 13 ms against 1.4 ms without the FILE
#   category). A private anonymous mapping holds no file-backed page, so for
#   a scan of one such mapping (CRIU's "simple mode") the category is not
#   asked for; the zero-page category still is. Same regions, same images.
# - lazy-pipeless: with CRIU_LAZY_PAGES_UNPINNED=1 (lazy-unpinned above) the
#   lazy pages never enter a pipe, yet CRIU still created a pipe per 1024 lazy
#   pages and grew it seven times (256 pipes per resident GiB, part of ~14 ms
#   per GiB in its page loop). A lazy page buffer is now never "full": all lazy pages
#   of a dump share one pipe that stays empty, the iovecs (and so the
#   pagemap's lazy entries) are the same runs, no longer cut every 1024 pages.
# - lazy-regions: CRIU's loop then still added the lazy pages of each scanned
#   region one by one (~3.5 ms per resident GiB; a fully written 4 GiB buffer
#   is one region of 1M pages). With lazy-pipeless a region's pages go in at
#   once: the same iovecs as page by page, since every page of a PAGEMAP_SCAN
#   region has the same categories and CRIU's stack check (is_stack compares
#   offsets within a page) answers the same for every page-aligned address.
CRIU_PATCHES="lazy-iovs-1 lazy-unpinned-1 kdat-magic-1 pagemap-anon-1 lazy-pipeless-1 lazy-regions-1"
patch_criu_source() { # $1 = CRIU's source tree
  local f="$1/criu/mem.c"
  local from='memcpy(pargs_iovs(args), pp->iovs, sizeof(struct iovec) \* pp->nr_iovs);'
  local to='memcpy(pargs_iovs(args), pp->iovs, sizeof(struct iovec) * pp->free_iov);'
  grep -q "$from" "$f" || die "CRIU $CRIU_VERSION's criu/mem.c has no lazy iovec copy to fix (scripts/setup.sh patch_criu_source)"
  sed -i "s/$from/$to/" "$f"
  grep -qF "$to" "$f" || die "could not apply the lazy iovec fix to $f"
  # drain_pages: the loop after this comment hands each pipe buffer to the parasite.
  local anchor='Step 2 -- grab pages into page-pipe'
  [ "$(grep -c "$anchor" "$f")" = 1 ] && [ "$(grep -A1 "$anchor" "$f" | grep -c 'list_for_each_entry(ppb, &pp->bufs, l) {')" = 1 ] \
    || die "CRIU $CRIU_VERSION's drain_pages is not where scripts/setup.sh expects it (lazy-unpinned)"
  local line='		if (opts.lazy_pages && (ppb->flags & PPB_LAZY) && getenv("CRIU_LAZY_PAGES_UNPINNED")) { args->off += ppb->nr_segs; continue; }'
  sed -i -e "/$anchor/{n" -e "a\\$line" -e '}' "$f"
  grep -q 'getenv("CRIU_LAZY_PAGES_UNPINNED")' "$f" || die "could not apply lazy-unpinned to $f"

  # pagemap-anon: pmc_anon_only says the cache holds one private anonymous mapping.
  f="$1/criu/pagemap-cache.c"
  [ "$(grep -c '^static bool pagemap_cache_disabled;$' "$f")" = 1 ] && [ "$(grep -c '^	pmc->end = vma->e->end;$' "$f")" = 1 ] \
    && [ "$(grep -c '^			pmc->end = high;$' "$f")" = 1 ] && [ "$(grep -c 'PAGE_IS_PFNZERO | PAGE_IS_FILE,$' "$f")" = 2 ] && [ "$(grep -c '^	return pmc_fill(pmc, pmc->start, pmc->end);$' "$f")" = 1 ] \
    || die "CRIU $CRIU_VERSION's pagemap-cache.c is not what scripts/setup.sh expects (pagemap-anon)"
  sed -i -e '/^static bool pagemap_cache_disabled;$/a\static bool pmc_anon_only; /* phaul-fast pagemap-anon: no file-backed pages to leave out */' \
    -e '/^	pmc->end = vma->e->end;$/a\	pmc_anon_only = vma_area_is(vma, VMA_ANON_PRIVATE) \&\& vma_entry_can_be_lazy(vma->e);' \
    -e '/^			pmc->end = high;$/a\			pmc_anon_only = false;' \
    -e '/^	return pmc_fill(pmc, pmc->start, pmc->end);$/i\	if (pmc_anon_only) pr_debug("%d: private anonymous, scanned without the file category\\n", pmc->pid);' \
    -e 's/PAGE_IS_PFNZERO | PAGE_IS_FILE,$/PAGE_IS_PFNZERO | (pmc_anon_only ? 0 : PAGE_IS_FILE),/' "$f"
  [ "$(grep -c 'pmc_anon_only' "$f")" = 6 ] || die "could not apply pagemap-anon to $f"

  # lazy-pipeless: a lazy page buffer is never full when its pages are not pinned.
  f="$1/criu/page-pipe.c"
  local full='	if (ppb->pages_in + ppb->pipe_off < ppb->pipe_size)'
  [ "$(grep -c "^$full\$" "$f")" = 1 ] && [ "$(grep -A1 "^$full\$" "$f" | grep -c '^		return 0;$')" = 1 ] \
    || die "CRIU $CRIU_VERSION's ppb_resize_pipe is not what scripts/setup.sh expects (lazy-pipeless)"
  line='	if ((ppb->flags \& PPB_LAZY) \&\& opts.lazy_pages \&\& lazy_unpinned()) return 0; /* phaul-fast lazy-pipeless */'
  sed -i -e "/^$full\$/{n" -e "a\\$line" -e '}' \
    -e '/^static inline int ppb_resize_pipe(/i\static int lazy_unpinned(void) { static int on = -1; if (on < 0) on = getenv("CRIU_LAZY_PAGES_UNPINNED") != NULL; return on; }\n' "$f"
  [ "$(grep -c 'lazy_unpinned(' "$f")" = 2 ] || die "could not apply lazy-pipeless to $f"

  # lazy-regions: a scanned region of lazy pages goes into the page pipe at once.
  cat >>"$f" <<'EOF'

/* phaul-fast lazy-regions: n lazy pages from addr, as n page_pipe_add_page()
 * calls would add them; only when a lazy buffer is never full (lazy-pipeless). */
int page_pipe_add_lazy_run(struct page_pipe *pp, unsigned long addr, unsigned long n)
{
	struct page_pipe_buf *ppb;

	if (!opts.lazy_pages || !lazy_unpinned())
		return 1;
	if (page_pipe_add_page(pp, addr, PPB_LAZY))
		return -1;
	ppb = list_entry(pp->bufs.prev, struct page_pipe_buf, l);
	ppb->iov[ppb->nr_segs - 1].iov_len += (n - 1) * PAGE_SIZE;
	ppb->pages_in += n - 1;
	pr_debug("lazy run of %lu pages at %lx added at once\n", n, addr);
	return 0;
}
EOF
  f="$1/criu/mem.c"
  [ "$(grep -c '^static int generate_iovs(' "$f")" = 1 ] && [ "$(grep -c '^			ppb_flags |= PPB_LAZY;$' "$f")" = 1 ] \
    || die "CRIU $CRIU_VERSION's generate_iovs is not what scripts/setup.sh expects (lazy-regions)"
  local helper
  helper=$(mktemp)
  cat >"$helper" <<'EOF'
/* phaul-fast lazy-regions: the rest of the PAGEMAP_SCAN region holding vaddr,
 * within the VMA, added at once. Every page of a region has the same
 * categories, and is_stack() (which compares offsets within a page) answers
 * the same for every page, so the page-by-page loop would add exactly these.
 * Returns 1 when added, 0 when the loop must go on page by page, -1 on error. */
extern int page_pipe_add_lazy_run(struct page_pipe *pp, unsigned long addr, unsigned long n);
static int lazy_region_add(struct vma_area *vma, struct page_pipe *pp, pmc_t *pmc, unsigned long *vaddr,
			   unsigned long *nr_scanned, unsigned long *nr_lazy)
{
	unsigned long end, n;
	int ret;

	if (!pmc->regs || pmc->regs_idx >= pmc->regs_len)
		return 0;
	end = min((unsigned long)pmc->regs[pmc->regs_idx].end, (unsigned long)vma->e->end);
	if (pmc->regs[pmc->regs_idx].start > *vaddr || end <= *vaddr + PAGE_SIZE)
		return 0;
	n = (end - *vaddr) / PAGE_SIZE;
	ret = page_pipe_add_lazy_run(pp, *vaddr, n);
	if (ret)
		return ret > 0 ? 0 : -1;
	*nr_lazy += n;
	*nr_scanned += n - 1;
	*vaddr = end - PAGE_SIZE;
	return 1;
}

EOF
  awk -v f="$helper" '/^static int generate_iovs\(/ { while ((getline l < f) > 0) print l } { print }' "$f" >"$f.new" && mv "$f.new" "$f"
  rm -f "$helper"
  line='		if ((ppb_flags \& PPB_LAZY) \&\& !has_parent \&\& !dump_all_pages) { int lr = lazy_region_add(vma, pp, pmc, \&vaddr, \&nr_scanned, \&pages[1]); if (lr < 0) { ret = -1; break; } if (lr) continue; } /* phaul-fast lazy-regions */'
  sed -i "/^			ppb_flags |= PPB_LAZY;\$/a\\$line" "$f"
  [ "$(grep -c 'lazy_region_add(' "$f")" = 2 ] || die "could not apply lazy-regions to $f"
}

build_criu() {
  local tarball src
  tarball=$(fetch_criu_source)
  src=$(mktemp -d)
  loud "building CRIU $CRIU_VERSION into $PREFIX (about 30 s)"
  tar -C "$src" -xf "$tarball"
  patch_criu_source "$src/criu-$CRIU_VERSION"
  (cd "$src/criu-$CRIU_VERSION" \
    && export SOURCE_DATE_EPOCH="$(stat -c %Y Makefile)" \
    && make -j"$(nproc)" criu lib >"$src/build.log" 2>&1 \
    && make install-criu install-lib PREFIX="$PREFIX" LIBDIR="$PREFIX/lib" SKIP_PIP_INSTALL=1 >>"$src/build.log" 2>&1) \
    || { tail -20 "$src/build.log" >&2; die "CRIU build failed (log above)"; }
  echo "$CRIU_PATCHES" > "$PREFIX/patches"
  rm -rf "$src"
}

CRIU_BIN=""
if [ "$FORCE_CRIU" = 0 ] && [ -x "$PREFIX/sbin/criu" ] && [ -f "$PREFIX/lib/pkgconfig/criu.pc" ] \
  && [ "$(cat "$PREFIX/patches" 2>/dev/null)" = "$CRIU_PATCHES" ] && criu_ok "$PREFIX/sbin/criu" "$CRIU_VERSION"; then
  CRIU_BIN="$PREFIX/sbin/criu"
elif [ "$FORCE_CRIU" = 0 ] && command -v criu >/dev/null && pkg-config --exists criu 2>/dev/null && criu_ok "$(command -v criu)"; then
  CRIU_BIN=$(command -v criu)
else
  rm -rf "$PREFIX"
  build_criu
  criu_ok "$PREFIX/sbin/criu" "$CRIU_VERSION" || die "the CRIU just built fails 'criu check': run '$PREFIX/sbin/criu check' to see why"
  CRIU_BIN="$PREFIX/sbin/criu"
fi
say "criu: $CRIU_BIN ($("$CRIU_BIN" --version | awk '/^Version:/{print $2}'))"

# ---------------------------------------------------------------- sysctls
# Lazy dumps splice pages into pipes; CRIU's lazy path fails below 4 MiB.
want_pipe=$((4 * 1024 * 1024))
cur_pipe=$(sysctl -n fs.pipe-max-size)
if [ "$cur_pipe" -lt "$want_pipe" ]; then
  sysctl -q -w fs.pipe-max-size=$want_pipe
  loud "raised fs.pipe-max-size from $cur_pipe to $want_pipe (lazy pages need >= 4 MiB pipes)"
fi

# ---------------------------------------------------------------- npm, addon, TypeScript
newer() { # is any file under $2.. newer than $1 (or $1 missing)?
  local stamp=$1; shift
  [ -e "$stamp" ] || return 0
  [ -n "$(find "$@" -newer "$stamp" -type f -print -quit 2>/dev/null)" ]
}

# A checkout (tests, bench, TypeScript sources) or an installed package
# (node_modules/phaul-fast: dist/ is built, npm installed the dependencies).
CHECKOUT=0
[ -f tsconfig.test.json ] && CHECKOUT=1

if [ "$CHECKOUT" = 1 ] && newer node_modules/.package-lock.json package-lock.json package.json; then
  loud "installing npm dependencies"
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null || die "npm ci failed"
fi

export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
ADDON=build/Release/phaul_fast.node
if newer "$ADDON" native binding.gyp "$PREFIX/lib/pkgconfig/criu.pc"; then
  loud "building the native addon"
  # Through npm, so node-gyp sees npm's configuration (nodedir, proxy, cafile).
  flock /tmp/phaul-build.lock npm run --silent build:native || die "addon build failed"
fi

if [ "$CHECKOUT" = 1 ] && newer dist/.stamp src test bench tsconfig.json tsconfig.test.json; then
  loud "compiling TypeScript"
  # From scratch: tsc never removes the output of a deleted or moved source file,
  # and a stale dist/src/x.js would shadow a new dist/src/x/index.js.
  rm -rf dist
  npx --no-install tsc -p tsconfig.test.json || die "TypeScript build failed"
  touch dist/.stamp
fi

# Test and benchmark workloads: small C programs, so CRIU has nothing exotic to dump.
[ "$CHECKOUT" = 1 ] && mkdir -p build/workloads
for c in test/workloads/*.c; do
  [ -f "$c" ] || continue
  out="build/workloads/$(basename "$c" .c)"
  if newer "$out" "$c"; then
    gcc -O2 -Wall -o "$out" "$c" -lpthread || die "could not compile $c"
  fi
done

# The same workloads built -static, to run inside a busybox container rootfs.
mkdir -p build/workloads/static
for w in memwork tcpwork forkwork; do
  out="build/workloads/static/$w"
  if newer "$out" "test/workloads/$w.c"; then
    gcc -O2 -static -o "$out" "test/workloads/$w.c" -lpthread || die "could not compile $w -static"
  fi
done

# runc asks CRIU to read /etc/criu/runc.conf; CRIU's default network lock
# (iptables) is absent on hosts like this one, so runc's own checkpoint and
# restore fail without nftables there.
if command -v runc >/dev/null && ! grep -qs '^[[:space:]]*network-lock' /etc/criu/runc.conf; then
  mkdir -p /etc/criu
  echo 'network-lock nftables' >> /etc/criu/runc.conf
  loud "added 'network-lock nftables' to /etc/criu/runc.conf (runc's CRIU settings; iptables is not installed)"
fi

# Where the engine finds CRIU (overridable with PHAUL_FAST_CRIU).
mkdir -p "$PREFIX"
printf '{ "criu": "%s" }\n' "$CRIU_BIN" > "$PREFIX/config.json"
say "ready"
