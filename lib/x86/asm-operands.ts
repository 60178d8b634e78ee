// Operands of the x86 emitter (see asm.ts): register tables, memory operands,
// label addresses, immediates, and how each one is spelled in the listing.
//
// The listing spelling is GNU as Intel syntax (`DWORD PTR [rbx+0x10]`,
// `OFFSET label`), so a listing line can be fed back to `as` unchanged; the
// tests rely on that to check the listing against binutils.

import { KvmGmemError } from '../errors.js';

/** Every error the emitter throws: the message starts with the instruction text. */
export class AsmError extends KvmGmemError {
  override name = 'AsmError';
  readonly code = 'ERR_KVM_ASM';
}

export type Bits = 16 | 32 | 64;

// The position in each table is the register number used in ModRM/SIB/opcode
// fields (bit 3 goes into a REX prefix).
export const REG64 = ['rax', 'rcx', 'rdx', 'rbx', 'rsp', 'rbp', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'] as const;
export const REG32 = ['eax', 'ecx', 'edx', 'ebx', 'esp', 'ebp', 'esi', 'edi', 'r8d', 'r9d', 'r10d', 'r11d', 'r12d', 'r13d', 'r14d', 'r15d'] as const;
export const REG16 = ['ax', 'cx', 'dx', 'bx', 'sp', 'bp', 'si', 'di', 'r8w', 'r9w', 'r10w', 'r11w', 'r12w', 'r13w', 'r14w', 'r15w'] as const;
/** Byte registers as numbered when a REX prefix is present (4..7 = spl..dil). */
export const REG8 = ['al', 'cl', 'dl', 'bl', 'spl', 'bpl', 'sil', 'dil', 'r8b', 'r9b', 'r10b', 'r11b', 'r12b', 'r13b', 'r14b', 'r15b'] as const;
/** Without a REX prefix, byte register numbers 4..7 mean ah..bh instead. */
export const REG8_HIGH = ['ah', 'ch', 'dh', 'bh'] as const;

export type Reg64 = (typeof REG64)[number];
export type Reg32 = (typeof REG32)[number];
export type Reg16 = (typeof REG16)[number];
export type Reg8 = (typeof REG8)[number] | (typeof REG8_HIGH)[number];
export type Reg = Reg64 | Reg32 | Reg16 | Reg8;
/** Registers that may form an address (base or index). */
export type AddrReg = Reg64 | Reg32 | Reg16;

export const CTRL_REGS = { cr0: 0, cr2: 2, cr3: 3, cr4: 4, cr8: 8 } as const;
export type CtrlReg = keyof typeof CTRL_REGS;
export const SEG_REGS = { es: 0, cs: 1, ss: 2, ds: 3, fs: 4, gs: 5 } as const;
export type SegReg = keyof typeof SEG_REGS;

export type OpSize = 8 | 16 | 32 | 64;

export interface RegInfo {
  readonly name: Reg;
  readonly size: OpSize;
  /** 0..15; bit 3 is carried by REX.R/X/B */
  readonly num: number;
  /** exists only in 64-bit mode (64-bit registers, r8..r15, spl..dil) */
  readonly only64: boolean;
  /** spl/bpl/sil/dil: need a REX prefix even with no REX bit set, or they would mean ah..bh */
  readonly needsRexByte: boolean;
  /** ah/ch/dh/bh: unencodable in an instruction that has a REX prefix */
  readonly forbidsRex: boolean;
}

const REGS = new Map<string, RegInfo>();
function addRegs(names: readonly Reg[], size: OpSize): void {
  names.forEach((name, num) => {
    const byteRex = size === 8 && num >= 4 && num < 8;
    REGS.set(name, {
      name,
      size,
      num,
      only64: size === 64 || num >= 8 || byteRex,
      needsRexByte: byteRex,
      forbidsRex: false,
    });
  });
}
addRegs(REG64, 64);
addRegs(REG32, 32);
addRegs(REG16, 16);
addRegs(REG8, 8);
REG8_HIGH.forEach((name, i) => {
  REGS.set(name, { name, size: 8, num: 4 + i, only64: false, needsRexByte: false, forbidsRex: true });
});

/** The register named `name`, or undefined if it is not a general-purpose register. */
export function regInfo(name: unknown): RegInfo | undefined {
  return typeof name === 'string' ? REGS.get(name) : undefined;
}

/** The register of the given size and number (e.g. 32, 8 -> r8d). */
export function regBySize(size: 16 | 32 | 64, num: number): RegInfo {
  const table = size === 64 ? REG64 : size === 32 ? REG32 : REG16;
  return REGS.get(table[num]!)!;
}

export function isCtrlReg(x: unknown): x is CtrlReg {
  return typeof x === 'string' && Object.hasOwn(CTRL_REGS, x);
}
export function isSegReg(x: unknown): x is SegReg {
  return typeof x === 'string' && Object.hasOwn(SEG_REGS, x);
}

// ---------------------------------------------------------------------------
// Immediates

export type Imm = number | bigint;

/** `v` as a bigint; throws if it is a non-integer number or beyond 2^53. */
export function toBig(v: Imm, what: string): bigint {
  if (typeof v === 'bigint') return v;
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) {
    throw new AsmError(`${what}: ${String(v)} is not an integer (use a bigint beyond 2^53)`);
  }
  return BigInt(v);
}

export function isImm(x: unknown): x is Imm {
  return typeof x === 'bigint' || typeof x === 'number';
}

/** 0x2a, -0x80: the spelling GNU as accepts in Intel syntax. */
export function hex(v: Imm): string {
  // Anything but a safe integer or a bigint is shown as it is (BigInt() of
  // a string or an object would throw SyntaxError while formatting a message).
  if (typeof v !== 'bigint' && !(typeof v === 'number' && Number.isSafeInteger(v))) return typeof v === 'object' ? typeof v : String(v);
  const b = BigInt(v);
  return b < 0n ? `-0x${(-b).toString(16)}` : `0x${b.toString(16)}`;
}

export function fitsSigned(v: bigint, bits: number): boolean {
  const half = 1n << BigInt(bits - 1);
  return v >= -half && v < half;
}
export function fitsUnsigned(v: bigint, bits: number): boolean {
  return v >= 0n && v < 1n << BigInt(bits);
}

/**
 * The value an immediate has inside an operand of `bits` bits, as a signed
 * number, or undefined if it is out of range. Both signed and unsigned
 * spellings are accepted (0xffffffff and -1 are the same 32-bit operand), as
 * GNU as does; the signed view is what decides whether the imm8 form fits.
 */
export function operandValue(v: bigint, bits: number): bigint | undefined {
  const b = BigInt(bits);
  if (v < -(1n << (b - 1n)) || v >= 1n << b) return undefined;
  return BigInt.asIntN(bits, v);
}

// ---------------------------------------------------------------------------
// Memory operands

export type MemSize = 8 | 16 | 32 | 64;
export type Scale = 1 | 2 | 4 | 8;

/** The long form of `mem()`'s address. */
export interface MemAddress {
  base?: AddrReg;
  index?: AddrReg;
  scale?: Scale;
  /** added to the address (to the label's address when `label` or `rip` is given) */
  disp?: Imm;
  /** the absolute guest address of this label (plus disp), as a full-size displacement */
  label?: string;
  /** 64-bit mode only: [rip + label + disp] */
  rip?: string;
}

export interface Mem {
  readonly kind: 'mem';
  readonly size: MemSize;
  readonly base: AddrReg | undefined;
  readonly index: AddrReg | undefined;
  readonly scale: Scale;
  readonly disp: bigint;
  readonly label: string | undefined;
  readonly rip: string | undefined;
}

const PTR: Record<MemSize, string> = { 8: 'BYTE PTR', 16: 'WORD PTR', 32: 'DWORD PTR', 64: 'QWORD PTR' };

/**
 * A memory operand of `size` bits:
 *   mem(32, undefined, 0x1000)              DWORD PTR [0x1000]   (absolute)
 *   mem(64, 'rsp', 8)                       QWORD PTR [rsp+0x8]
 *   mem(32, { base: 'rbx', index: 'rcx', scale: 8, disp: 16 })
 *   mem(32, { rip: 'counter' })             [rip+counter], 64-bit mode
 *   mem(16, { label: 'gdt_ptr' })           absolute address of a label
 * Which registers are usable depends on the mode; that is checked when the
 * operand is used, since a Mem does not know its mode.
 */
export function mem(size: MemSize, base?: AddrReg, disp?: Imm): Mem;
export function mem(size: MemSize, addr: MemAddress): Mem;
export function mem(size: MemSize, a?: AddrReg | MemAddress, d?: Imm): Mem {
  const addr: MemAddress = typeof a === 'object' && a !== null ? a : { base: a, disp: d ?? 0 };
  const where = `mem(${String(size)}, ...)`;
  if (size !== 8 && size !== 16 && size !== 32 && size !== 64) {
    throw new AsmError(`${where}: size must be 8, 16, 32 or 64 bits`);
  }
  for (const r of [addr.base, addr.index]) {
    const info = regInfo(r);
    if (r !== undefined && (info === undefined || info.size === 8)) {
      throw new AsmError(`${where}: '${String(r)}' is not a 16/32/64-bit address register`);
    }
  }
  const scale = addr.scale ?? 1;
  if (![1, 2, 4, 8].includes(scale)) throw new AsmError(`${where}: scale must be 1, 2, 4 or 8, not ${String(scale)}`);
  if (scale !== 1 && addr.index === undefined) throw new AsmError(`${where}: a scale needs an index register`);
  for (const l of [addr.label, addr.rip]) {
    if (l !== undefined && (typeof l !== 'string' || l === '')) throw new AsmError(`${where}: label must be a non-empty string`);
  }
  if (addr.rip !== undefined && (addr.base !== undefined || addr.index !== undefined || addr.label !== undefined)) {
    throw new AsmError(`${where}: a RIP-relative operand has no base, index or other label`);
  }
  return {
    kind: 'mem',
    size,
    base: addr.base,
    index: addr.index,
    scale,
    disp: toBig(addr.disp ?? 0, where),
    label: addr.label,
    rip: addr.rip,
  };
}

export function isMem(x: unknown): x is Mem {
  return typeof x === 'object' && x !== null && (x as { kind?: unknown }).kind === 'mem';
}

/** `[rbx+rcx*8+0x10]`, with the `DWORD PTR` size prefix unless `withSize` is false. */
export function formatMem(m: Mem, withSize = true): string {
  const parts: string[] = [];
  if (m.rip !== undefined) parts.push('rip', m.rip);
  if (m.base !== undefined) parts.push(m.base);
  // A lone index keeps its `*1`: GNU as reads a bare `[rcx]` as a base register.
  if (m.index !== undefined) parts.push(m.scale === 1 && m.base !== undefined ? m.index : `${m.index}*${m.scale}`);
  if (m.label !== undefined) parts.push(m.label);
  let s = parts.join('+');
  if (parts.length === 0) s = hex(m.disp);
  else if (m.disp !== 0n) s += m.disp < 0n ? hex(m.disp) : `+${hex(m.disp)}`;
  return withSize ? `${PTR[m.size]} [${s}]` : `[${s}]`;
}

// ---------------------------------------------------------------------------
// Label addresses as immediates

/** The absolute guest address of a label (plus addend), as an immediate: `mov eax, OFFSET label`. */
export interface LabelAddr {
  readonly kind: 'offset';
  readonly label: string;
  readonly addend: bigint;
}

export function offset(label: string, addend: Imm = 0): LabelAddr {
  if (typeof label !== 'string' || label === '') throw new AsmError(`offset(): label must be a non-empty string`);
  return { kind: 'offset', label, addend: toBig(addend, `offset(${label})`) };
}

export function isLabelAddr(x: unknown): x is LabelAddr {
  return typeof x === 'object' && x !== null && (x as { kind?: unknown }).kind === 'offset';
}

/** Any operand, as the listing spells it. */
export function formatOperand(x: unknown): string {
  if (isMem(x)) return formatMem(x);
  if (isLabelAddr(x)) return `OFFSET ${x.label}${x.addend === 0n ? '' : x.addend < 0n ? hex(x.addend) : `+${hex(x.addend)}`}`;
  if (isImm(x)) return hex(x);
  return String(x);
}
