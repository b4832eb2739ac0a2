// Kernel UAPI constants newer than the build machine's headers (Debian 12 ships
// 6.1 headers; PAGEMAP_SCAN and UFFD_FEATURE_WP_ASYNC arrived in 6.7). Values
// are from include/uapi/linux/userfaultfd.h and include/uapi/linux/fs.h; each is
// defined only when the system header lacks it, so newer headers win. Whether
// the running kernel supports them is decided at run time by the probes.
#pragma once

#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <sys/ioctl.h>

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

#ifndef PAGEMAP_SCAN
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)

#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)

struct page_region {
  uint64_t start;
  uint64_t end;  // exclusive
  uint64_t categories;
};

struct pm_scan_arg {
  uint64_t size;  // sizeof(struct pm_scan_arg)
  uint64_t flags;
  uint64_t start;
  uint64_t end;
  uint64_t walk_end;  // out: where the walk stopped
  uint64_t vec;       // struct page_region *
  uint64_t vec_len;
  uint64_t max_pages;
  uint64_t category_inverted;
  uint64_t category_mask;
  uint64_t category_anyof_mask;
  uint64_t return_mask;
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

static_assert(sizeof(struct pm_scan_arg) == 96, "pm_scan_arg is 12 u64s in the kernel UAPI");
static_assert(sizeof(struct page_region) == 24, "page_region is 3 u64s in the kernel UAPI");
