// /proc/PID/maps and smaps: reading them whole and parsing their VMA lines.
#pragma once
#include <stdint.h>

#include <string>

namespace phaul {
namespace dirty {

// Flags of a VMA (vmas() triples).
enum VmaFlag : uint64_t {
  kVmaRead = 1,
  kVmaWrite = 2,
  kVmaExec = 4,
  kVmaShared = 8,    // MAP_SHARED (shmem, memfd, SysV, shared file): others may write it unseen
  kVmaFile = 16,     // backed by a file (incl. memfd / SysV shm)
  kVmaSpecial = 32,  // [vdso] [vvar] [vvar_vclock] [vsyscall]: never registered
  kVmaTracked = 64,  // registered with our uffd: its writes are reported
};

struct Vma {
  uint64_t start = 0, end = 0, offset = 0, inode = 0;
  uint64_t flags = 0;
  std::string name;
};

// Reads a /proc file whole (its size is unknown until read). false + *err on failure.
bool ReadAll(const std::string& path, std::string* out, int* err);

// Parses one maps/smaps header line "start-end perms offset dev inode name".
bool ParseVmaLine(const char* p, const char* end, Vma* v);

}  // namespace dirty
}  // namespace phaul
