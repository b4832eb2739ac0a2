// What native/page_buffer.cc exports: long-lived page buffers in their own
// memory (transparent huge pages where the kernel gives them), touched once.

export interface PageBufferNative {
  /** A zero-filled Buffer of `size` bytes (1 B to 1 GiB), unmapped when collected. Throws RangeError on a bad size. */
  allocPageBuffer(size: number): Buffer;
}
