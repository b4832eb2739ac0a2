// The page size every layout here assumes: x86-64's and aarch64's 4 KiB base
// page, which CRIU's images and our wire formats count in.
export const PAGE_SIZE = 4096;
