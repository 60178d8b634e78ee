// x86 register state as KVM exchanges it: struct kvm_regs (144 bytes),
// struct kvm_sregs (312 bytes) and struct kvm_cpuid_entry2 (40 bytes), from
// arch/x86/include/uapi/asm/kvm.h. 64-bit fields are bigints.

export const REGS_SIZE = 144;
export const SREGS_SIZE = 312;
export const CPUID_ENTRY_SIZE = 40;

const REG_NAMES = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags'] as const;
export type RegName = (typeof REG_NAMES)[number];
export type Regs = Record<RegName, bigint>;

export function decodeRegs(b: Uint8Array): Regs {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const r = {} as Regs;
  REG_NAMES.forEach((n, i) => (r[n] = v.getBigUint64(i * 8, true)));
  return r;
}

export function encodeRegs(r: Regs): Uint8Array {
  const b = new Uint8Array(REGS_SIZE);
  const v = new DataView(b.buffer);
  REG_NAMES.forEach((n, i) => v.setBigUint64(i * 8, BigInt.asUintN(64, r[n]), true));
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
    base: v.getBigUint64(o, true), limit: v.getUint32(o + 8, true), selector: v.getUint16(o + 12, true),
    type: v.getUint8(o + 14), present: v.getUint8(o + 15), dpl: v.getUint8(o + 16), db: v.getUint8(o + 17),
    s: v.getUint8(o + 18), l: v.getUint8(o + 19), g: v.getUint8(o + 20), avl: v.getUint8(o + 21), unusable: v.getUint8(o + 22),
  };
}

function setSeg(v: DataView, o: number, s: Segment): void {
  v.setBigUint64(o, s.base, true);
  v.setUint32(o + 8, s.limit >>> 0, true);
  v.setUint16(o + 12, s.selector, true);
  [s.type, s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl, s.unusable].forEach((x, i) => v.setUint8(o + 14 + i, x));
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
  SEG_NAMES.forEach((n, i) => setSeg(v, i * 24, r[n]));
  v.setBigUint64(192, r.gdt.base, true);
  v.setUint16(200, r.gdt.limit, true);
  v.setBigUint64(208, r.idt.base, true);
  v.setUint16(216, r.idt.limit, true);
  CR_NAMES.forEach((n, i) => v.setBigUint64(224 + i * 8, BigInt.asUintN(64, r[n]), true));
  r.interruptBitmap.forEach((x, i) => v.setBigUint64(280 + i * 8, x, true));
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
      function: v.getUint32(o, true), index: v.getUint32(o + 4, true), flags: v.getUint32(o + 8, true),
      eax: v.getUint32(o + 12, true), ebx: v.getUint32(o + 16, true), ecx: v.getUint32(o + 20, true), edx: v.getUint32(o + 24, true),
    });
  }
  return out;
}

export function encodeCpuid(entries: readonly CpuidEntry[]): Uint8Array {
  const b = new Uint8Array(entries.length * CPUID_ENTRY_SIZE);
  const v = new DataView(b.buffer);
  entries.forEach((e, i) => {
    const o = i * CPUID_ENTRY_SIZE;
    [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx].forEach((x, j) => v.setUint32(o + j * 4, x >>> 0, true));
  });
  return b;
}
