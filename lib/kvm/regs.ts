// x86 register state as KVM exchanges it: struct kvm_regs (144 bytes),
// struct kvm_sregs (312 bytes) and struct kvm_cpuid_entry2 (40 bytes), from
// arch/x86/include/uapi/asm/kvm.h. 64-bit fields are bigints.
import { argError, typeCode } from '../args.js';

export const REGS_SIZE = 144;
export const SREGS_SIZE = 312;
export const CPUID_ENTRY_SIZE = 40;

const REG_NAMES = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags'] as const;
export type RegName = (typeof REG_NAMES)[number];
export type Regs = Record<RegName, bigint>;

// Field readers for the encoders: each field is read once, and a value of
// the wrong type is a TypeError naming the field (BigInt('x') would be a
// SyntaxError, and `x >>> 0` would quietly send 0).
function shown(v: unknown): string {
  return typeof v === 'number' ? String(v) : typeof v === 'string' ? JSON.stringify(v) : v === null ? 'null' : typeof v;
}

function u64(v: unknown, name: string): bigint {
  if (typeof v === 'bigint') return BigInt.asUintN(64, v); // written modulo 2^64
  throw argError(`${name} must be a bigint, got ${shown(v)}`, 'ERR_INVALID_ARG_TYPE');
}

function uint(v: unknown, bits: 8 | 16 | 32, name: string): number {
  const max = 2 ** bits;
  // Negative values down to -2^(bits-1) are taken as their two's complement.
  if (typeof v === 'number' && Number.isInteger(v) && v < max && v >= -(max / 2)) return v < 0 ? v + max : v;
  throw argError(`${name} must be an integer that fits ${bits} bits, got ${shown(v)}`, typeCode(v, 'number'));
}

function obj<T>(v: unknown, name: string): T {
  if (typeof v !== 'object' || v === null) throw argError(`${name} must be an object, got ${shown(v)}`, 'ERR_INVALID_ARG_TYPE');
  return v as T;
}

export function decodeRegs(b: Uint8Array): Regs {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const r = {} as Regs;
  REG_NAMES.forEach((n, i) => (r[n] = v.getBigUint64(i * 8, true)));
  return r;
}

export function encodeRegs(r: Regs): Uint8Array {
  const b = new Uint8Array(REGS_SIZE);
  const v = new DataView(b.buffer);
  const regs = obj<Regs>(r, 'regs');
  REG_NAMES.forEach((n, i) => v.setBigUint64(i * 8, u64(regs[n], `regs.${n}`), true));
  return b;
}

export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

export interface DescriptorTable {
  base: bigint;
  limit: number;
}

const SEG_NAMES = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
const CR_NAMES = ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apicBase'] as const;
export type Sregs = Record<(typeof SEG_NAMES)[number], Segment> &
  Record<'gdt' | 'idt', DescriptorTable> &
  Record<(typeof CR_NAMES)[number], bigint> & { interruptBitmap: bigint[] };

function getSeg(v: DataView, o: number): Segment {
  return {
    base: v.getBigUint64(o, true),
    limit: v.getUint32(o + 8, true),
    selector: v.getUint16(o + 12, true),
    type: v.getUint8(o + 14),
    present: v.getUint8(o + 15),
    dpl: v.getUint8(o + 16),
    db: v.getUint8(o + 17),
    s: v.getUint8(o + 18),
    l: v.getUint8(o + 19),
    g: v.getUint8(o + 20),
    avl: v.getUint8(o + 21),
    unusable: v.getUint8(o + 22),
  };
}

const SEG_BYTES = ['type', 'present', 'dpl', 'db', 's', 'l', 'g', 'avl', 'unusable'] as const;

function setSeg(v: DataView, o: number, seg: unknown, name: string): void {
  const s = obj<Segment>(seg, name);
  v.setBigUint64(o, u64(s.base, `${name}.base`), true);
  v.setUint32(o + 8, uint(s.limit, 32, `${name}.limit`), true);
  v.setUint16(o + 12, uint(s.selector, 16, `${name}.selector`), true);
  SEG_BYTES.forEach((f, i) => v.setUint8(o + 14 + i, uint(s[f], 8, `${name}.${f}`)));
}

export function decodeSregs(b: Uint8Array): Sregs {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const r = {} as Sregs;
  SEG_NAMES.forEach((n, i) => (r[n] = getSeg(v, i * 24)));
  r.gdt = { base: v.getBigUint64(192, true), limit: v.getUint16(200, true) };
  r.idt = { base: v.getBigUint64(208, true), limit: v.getUint16(216, true) };
  CR_NAMES.forEach((n, i) => (r[n] = v.getBigUint64(224 + i * 8, true)));
  r.interruptBitmap = [0, 1, 2, 3].map((i) => v.getBigUint64(280 + i * 8, true));
  return r;
}

export function encodeSregs(r: Sregs): Uint8Array {
  const b = new Uint8Array(SREGS_SIZE);
  const v = new DataView(b.buffer);
  const sr = obj<Sregs>(r, 'sregs');
  SEG_NAMES.forEach((n, i) => setSeg(v, i * 24, sr[n], `sregs.${n}`));
  const gdt = obj<DescriptorTable>(sr.gdt, 'sregs.gdt');
  v.setBigUint64(192, u64(gdt.base, 'sregs.gdt.base'), true);
  v.setUint16(200, uint(gdt.limit, 16, 'sregs.gdt.limit'), true);
  const idt = obj<DescriptorTable>(sr.idt, 'sregs.idt');
  v.setBigUint64(208, u64(idt.base, 'sregs.idt.base'), true);
  v.setUint16(216, uint(idt.limit, 16, 'sregs.idt.limit'), true);
  CR_NAMES.forEach((n, i) => v.setBigUint64(224 + i * 8, u64(sr[n], `sregs.${n}`), true));
  const bitmap = sr.interruptBitmap;
  if (!Array.isArray(bitmap) || bitmap.length > 4)
    throw argError('sregs.interruptBitmap must be an array of at most 4 bigints', Array.isArray(bitmap) ? 'ERR_INVALID_ARG_VALUE' : 'ERR_INVALID_ARG_TYPE');
  for (let i = 0; i < bitmap.length; i++) v.setBigUint64(280 + i * 8, u64(bitmap[i], `sregs.interruptBitmap[${i}]`), true);
  return b;
}

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export function decodeCpuid(b: Uint8Array): CpuidEntry[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: CpuidEntry[] = [];
  for (let o = 0; o + CPUID_ENTRY_SIZE <= b.byteLength; o += CPUID_ENTRY_SIZE) {
    out.push({
      function: v.getUint32(o, true),
      index: v.getUint32(o + 4, true),
      flags: v.getUint32(o + 8, true),
      eax: v.getUint32(o + 12, true),
      ebx: v.getUint32(o + 16, true),
      ecx: v.getUint32(o + 20, true),
      edx: v.getUint32(o + 24, true),
    });
  }
  return out;
}

const CPUID_FIELDS = ['function', 'index', 'flags', 'eax', 'ebx', 'ecx', 'edx'] as const;

export function encodeCpuid(entries: readonly CpuidEntry[]): Uint8Array {
  if (!Array.isArray(entries)) throw argError('setCpuid: entries must be an array of CPUID entries', 'ERR_INVALID_ARG_TYPE');
  const list: unknown[] = [...(entries as readonly unknown[])]; // one read of the length and of each element
  const b = new Uint8Array(list.length * CPUID_ENTRY_SIZE);
  const v = new DataView(b.buffer);
  list.forEach((entry, i) => {
    const e = obj<CpuidEntry>(entry, `entries[${i}]`);
    const o = i * CPUID_ENTRY_SIZE;
    CPUID_FIELDS.forEach((f, j) => v.setUint32(o + j * 4, uint(e[f], 32, `entries[${i}].${f}`), true));
  });
  return b;
}
