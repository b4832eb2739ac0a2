// CRIU's pagemap-<id>.img, read and written by hand (docs/IMAGES.md).
//
// Layout: u32 IMG_COMMON_MAGIC, u32 PAGEMAP_MAGIC, then records, each a u32
// length (native endian, x86-64: little) followed by that many protobuf bytes:
// first pagemap_head{pages_id=1}, then pagemap_entry{vaddr=1,
// compat_nr_pages=2, in_parent=3, flags=4, nr_pages=5} per range. Written from
// images/pagemap.proto's field numbers; no protobuf library needed for five
// varint fields, and unknown fields are skipped by wire type.
import * as fs from 'node:fs';
import { PhaulError } from '../errors';

export const IMG_COMMON_MAGIC = 0x54564319;
export const PAGEMAP_MAGIC = 0x56084025;
import { PAGE_SIZE } from '../util/page-size';

export { PAGE_SIZE };

/** pagemap_entry flags (criu/include/pagemap.h). */
export const PE_PARENT = 1;
export const PE_LAZY = 2;
export const PE_PRESENT = 4;

export interface PagemapEntry {
  vaddr: number;
  nrPages: number;
  flags: number;
  inParent: boolean;
}

export interface PagemapImage {
  pagesId: number;
  entries: PagemapEntry[];
}

// A record longer than this is not a pagemap record: refuse before allocating.
const MAX_RECORD = 1 << 16;
// 2^53: every value we accept must be exact as a JS number.
const MAX_SAFE = Number.MAX_SAFE_INTEGER;

function bad(what: string, msg: string): PhaulError {
  return new PhaulError('criu', `${what}: ${msg}`);
}

/** Decodes one varint at buf[pos]; returns [value, next]. Values above 2^53 are refused. */
function readVarint(buf: Uint8Array, pos: number, end: number, what: string): [number, number] {
  let v = 0;
  let mul = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= end) throw bad(what, 'truncated varint');
    const b = buf[pos++];
    v += (b & 0x7f) * mul;
    if (!(b & 0x80)) {
      if (v > MAX_SAFE) throw bad(what, 'varint beyond 2^53');
      return [v, pos];
    }
    mul *= 128;
  }
  throw bad(what, 'varint longer than 10 bytes');
}

function skipField(buf: Uint8Array, pos: number, end: number, wire: number, what: string): number {
  switch (wire) {
    case 0: return readVarint(buf, pos, end, what)[1];
    case 1: return pos + 8;
    case 2: { const [len, p] = readVarint(buf, pos, end, what); return p + len; }
    case 5: return pos + 4;
    default: throw bad(what, `unsupported protobuf wire type ${wire}`);
  }
}

/** Parses the protobuf bytes of one pagemap_entry, applying CRIU's compat rules. */
function decodeEntry(buf: Uint8Array, pos: number, end: number, what: string): PagemapEntry {
  let vaddr = -1, compat = -1, nr = -1, flags = -1, inParent = false, hasInParent = false;
  while (pos < end) {
    const [key, p] = readVarint(buf, pos, end, what);
    const field = Math.floor(key / 8), wire = key % 8;
    if (wire === 0 && field >= 1 && field <= 5) {
      const [v, q] = readVarint(buf, p, end, what);
      pos = q;
      if (field === 1) vaddr = v;
      else if (field === 2) compat = v;
      else if (field === 3) { hasInParent = true; inParent = v !== 0; }
      else if (field === 4) flags = v;
      else nr = v;
    } else {
      pos = skipField(buf, p, end, wire, what);
    }
  }
  if (pos !== end) throw bad(what, 'entry overruns its record');
  if (vaddr < 0 || compat < 0) throw bad(what, 'entry without vaddr or compat_nr_pages');
  // CRIU (pagemap.c, init_compat_pagemap_entry): in_parent implies PE_PARENT,
  // absent flags mean PE_PRESENT, absent nr_pages (field 5) means field 2.
  if (hasInParent && inParent) flags = (flags < 0 ? 0 : flags) | PE_PARENT;
  else if (flags < 0) flags = PE_PRESENT;
  return { vaddr, nrPages: nr >= 0 ? nr : compat, flags, inParent };
}

/** Parses a whole pagemap image (the bytes of pagemap-<id>.img). */
export function decodePagemap(buf: Uint8Array, what = 'pagemap image'): PagemapImage {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (buf.length < 8) throw bad(what, 'shorter than its magics');
  if (dv.getUint32(0, true) !== IMG_COMMON_MAGIC || dv.getUint32(4, true) !== PAGEMAP_MAGIC) throw bad(what, 'not a pagemap image (bad magic)');
  let pos = 8;
  let pagesId = -1;
  const entries: PagemapEntry[] = [];
  while (pos < buf.length) {
    if (pos + 4 > buf.length) throw bad(what, 'truncated record length');
    const len = dv.getUint32(pos, true);
    pos += 4;
    if (len > MAX_RECORD || pos + len > buf.length) throw bad(what, `record of ${len} bytes overruns the file`);
    if (pagesId < 0) {
      // pagemap_head{pages_id = 1}
      let p = pos;
      while (p < pos + len) {
        const [key, q] = readVarint(buf, p, pos + len, what);
        if (key === 8) [pagesId, p] = readVarint(buf, q, pos + len, what);
        else p = skipField(buf, q, pos + len, key % 8, what);
      }
      if (pagesId < 0) throw bad(what, 'pagemap_head without pages_id');
    } else {
      entries.push(decodeEntry(buf, pos, pos + len, what));
    }
    pos += len;
  }
  if (pagesId < 0) throw bad(what, 'no pagemap_head');
  return { pagesId, entries };
}

export function readPagemapImage(file: string): PagemapImage {
  return decodePagemap(fs.readFileSync(file), file);
}

function varintLen(v: number): number {
  let n = 1;
  while (v >= 128) { v = Math.floor(v / 128); n++; }
  return n;
}

function putVarint(buf: Buffer, pos: number, v: number): number {
  while (v >= 128) {
    buf[pos++] = (v % 128) | 0x80;
    v = Math.floor(v / 128);
  }
  buf[pos++] = v;
  return pos;
}

/**
 * The bytes of a pagemap image. Every entry gets vaddr, the page count in
 * both field 2 (CRIU 4.1 reads it) and field 5 (4.2 reads it), flags always
 * (absent flags would mean PE_PRESENT), and in_parent when set.
 */
export function encodePagemap(img: PagemapImage): Buffer {
  let size = 8 + 4 + 1 + varintLen(img.pagesId);
  for (const e of img.entries) {
    if (!Number.isSafeInteger(e.vaddr) || e.vaddr < 0 || e.vaddr % PAGE_SIZE) throw new PhaulError('failed', `pagemap entry vaddr ${e.vaddr} is not a page address`);
    if (!Number.isSafeInteger(e.nrPages) || e.nrPages < 1 || e.nrPages > 0xffffffff) throw new PhaulError('failed', `pagemap entry at 0x${e.vaddr.toString(16)}: ${e.nrPages} pages does not fit compat_nr_pages`);
    size += 4 + entryLen(e);
  }
  const buf = Buffer.allocUnsafe(size);
  buf.writeUInt32LE(IMG_COMMON_MAGIC, 0);
  buf.writeUInt32LE(PAGEMAP_MAGIC, 4);
  buf.writeUInt32LE(1 + varintLen(img.pagesId), 8);
  buf[12] = 0x08;
  let pos = putVarint(buf, 13, img.pagesId);
  for (const e of img.entries) {
    buf.writeUInt32LE(entryLen(e), pos);
    pos += 4;
    buf[pos++] = 0x08; pos = putVarint(buf, pos, e.vaddr);
    buf[pos++] = 0x10; pos = putVarint(buf, pos, e.nrPages);
    if (e.inParent) { buf[pos++] = 0x18; buf[pos++] = 1; }
    buf[pos++] = 0x20; pos = putVarint(buf, pos, e.flags);
    buf[pos++] = 0x28; pos = putVarint(buf, pos, e.nrPages);
  }
  if (pos !== size) throw new PhaulError('failed', `pagemap encoder: wrote ${pos} of ${size} bytes`);
  return buf;
}

function entryLen(e: PagemapEntry): number {
  return 1 + varintLen(e.vaddr) + 1 + varintLen(e.nrPages) + (e.inParent ? 2 : 0) + 1 + varintLen(e.flags) + 1 + varintLen(e.nrPages);
}

/** Writes an image atomically (temporary name, then rename): a reader never sees half of it. */
export function writeFileAtomic(file: string, data: Uint8Array): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

export function writePagemapImage(file: string, img: PagemapImage): void {
  writeFileAtomic(file, encodePagemap(img));
}

/** Pages whose data is in the image's pages file (PE_PRESENT entries). */
export function presentPages(img: PagemapImage): number {
  let n = 0;
  for (const e of img.entries) if (e.flags & PE_PRESENT) n += e.nrPages;
  return n;
}
