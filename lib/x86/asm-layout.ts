// Layout and output for the x86 emitter (see asm.ts): addresses, jump
// sizing, label resolution, bytes and the listing.

import { AsmError, type Bits, fitsSigned, hex } from './asm-operands.js';
import { type Insn, err, fits, insnSize, le, rangeError } from './asm-encode.js';

/** Relaxable branch: the rel8 opcode if there is one, and the rel16/rel32 opcode. */
export interface BranchForm {
  readonly short?: readonly number[];
  readonly near: readonly number[];
}

/** What the Assembler records, in order. */
export type Item =
  | { kind: 'insn'; insn: Insn }
  | { kind: 'raw'; text: string; bytes: Uint8Array }
  | { kind: 'label'; name: string }
  | { kind: 'code'; bits: Bits }
  | { kind: 'branch'; text: string; form: BranchForm; target: string; bits: Bits }
  | { kind: 'align'; text: string; n: bigint; fill: number };

export interface AssembleResult {
  bytes: Uint8Array;
  /** label -> guest address */
  labels: Map<string, bigint>;
  /** one line per instruction: address, bytes, Intel-syntax text (formatted when first read) */
  readonly listing: string;
}

/** Data lines show at most this many bytes in the listing. */
export const BYTES_PER_LISTING_LINE = 8;

function branchSize(it: { form: BranchForm; bits: Bits }, long: boolean): number {
  return long ? it.form.near.length + (it.bits === 16 ? 2 : 4) : it.form.short!.length + 1;
}

function itemSize(it: Item, pc: bigint, long: boolean): number {
  switch (it.kind) {
    case 'insn':
      return insnSize(it.insn);
    case 'raw':
      return it.bytes.length;
    case 'label':
    case 'code':
      return 0;
    case 'branch':
      return branchSize(it, long);
    case 'align':
      return Number((it.n - (pc % it.n)) % it.n);
  }
}

/**
 * Addresses of all items. Branches start short and only ever grow, so this
 * terminates: repeat until no short branch is out of rel8 range (a grown
 * branch moves later code, which can push other branches out of range).
 */
function layout(items: readonly Item[], origin: bigint): { addrs: bigint[]; labels: Map<string, bigint>; long: boolean[]; end: bigint } {
  const long = items.map((it) => it.kind === 'branch' && it.form.short === undefined);
  for (;;) {
    const addrs: bigint[] = [];
    const labels = new Map<string, bigint>();
    let pc = origin;
    items.forEach((it, i) => {
      addrs.push(pc);
      if (it.kind === 'label') labels.set(it.name, pc);
      pc += BigInt(itemSize(it, pc, long[i]!));
    });
    let grew = false;
    items.forEach((it, i) => {
      if (it.kind !== 'branch' || long[i]) return;
      const target = labels.get(it.target);
      if (target === undefined) throw err(it.text, `unknown label '${it.target}'`);
      if (!fitsSigned(target - (addrs[i]! + BigInt(branchSize(it, false))), 8)) {
        long[i] = true;
        grew = true;
      }
    });
    if (!grew) return { addrs, labels, long, end: pc };
  }
}

interface Line {
  addr: bigint;
  /** The item's bytes as emitted (not copied: only the listing reads them). */
  bytes: ArrayLike<number>;
  text: string;
  data: boolean;
}

export function assembleItems(items: readonly Item[], origin: bigint, addressBits: 32 | 64): AssembleResult {
  const { addrs, labels, long, end } = layout(items, origin);
  if (end > 1n << BigInt(addressBits)) throw new AsmError(`the program ends at ${hex(end)}, past the ${addressBits}-bit address space`);
  const bytes = new Uint8Array(Number(end - origin));
  const lines: Line[] = [];
  const resolve = (text: string, label: string): bigint => {
    const v = labels.get(label);
    if (v === undefined) throw err(text, `unknown label '${label}'`);
    return v;
  };

  items.forEach((it, i) => {
    const addr = addrs[i]!;
    let out: number[] | Uint8Array;
    switch (it.kind) {
      case 'label':
      case 'code':
        lines.push({ addr, bytes: NO_BYTES, text: it.kind === 'label' ? `${it.name}:` : `.code${it.bits}`, data: true });
        return;
      case 'raw':
        out = it.bytes;
        break;
      case 'align':
        out = new Uint8Array(itemSize(it, addr, false)).fill(it.fill);
        break;
      case 'branch': {
        const size = branchSize(it, long[i]!);
        const disp = resolve(it.text, it.target) - (addr + BigInt(size));
        const opcode = long[i] ? it.form.near : it.form.short!;
        const width = size - opcode.length;
        // 32-bit mode: EIP arithmetic wraps at 4 GiB, so any distance is
        // reachable. 16-bit mode: IP wraps at 64 KiB too, but whether a
        // wrapped jump lands right depends on CS, which we do not know, so
        // beyond +-32 KiB is refused (GNU as accepts up to 64 KiB).
        if (it.bits !== 32 && !fitsSigned(disp, width * 8)) {
          throw err(it.text, `target '${it.target}' is ${disp} bytes away, out of range for rel${width * 8} in ${it.bits}-bit mode`);
        }
        out = [...opcode, ...le(disp, width)];
        break;
      }
      case 'insn': {
        const insn = it.insn;
        const next = addr + BigInt(insnSize(insn));
        out = [...insn.head];
        for (const f of insn.fields) {
          let v = f.value;
          if (f.sym) v += resolve(insn.text, f.sym.label) - (f.sym.pcrel ? next : 0n);
          if (!fits(v, f.size, f.range)) throw rangeError(insn.text, f.what, v, f.size, f.range);
          out.push(...le(v, f.size));
        }
        break;
      }
    }
    bytes.set(out, Number(addr - origin));
    // Data (db/dw/dd/dq, align) does not widen the bytes column; instructions do.
    const data = it.kind === 'raw' || it.kind === 'align' || (it.kind === 'insn' && it.insn.head.length === 0);
    lines.push({ addr, bytes: out, text: it.kind === 'insn' ? it.insn.text : it.text, data });
  });

  // The listing is text for a person (a failed test prints it): formatted on
  // first read, not on every assemble (a guest is assembled per test, and
  // under QEMU TCG formatting took as long as encoding).
  let listing: string | undefined;
  return {
    bytes,
    labels,
    get listing(): string {
      return (listing ??= formatListing(lines));
    },
  };
}

const NO_BYTES: ArrayLike<number> = [];

const hexBytes = (b: ArrayLike<number>): string => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(' ');

/**
 * "0000000000001000  b8 2a 00 00 00   mov eax, 0x2a": the bytes column is as
 * wide as the longest instruction; data and padding longer than that are
 * cut short with "..." (the full bytes are in `bytes`).
 */
function formatListing(lines: readonly Line[]): string {
  let width = 0;
  for (const l of lines) {
    if (!l.data) width = Math.max(width, l.bytes.length * 3 - 1);
    else if (l.bytes.length > 0) width = Math.max(width, BYTES_PER_LISTING_LINE * 3 - 1);
  }
  return lines
    .map((l) => {
      let b = hexBytes(l.bytes);
      if (b.length > width) b = `${hexBytes(Array.prototype.slice.call(l.bytes, 0, Math.floor((width - 3) / 3)) as number[])} ...`;
      return `${l.addr.toString(16).padStart(16, '0')}  ${b.padEnd(width)}   ${l.text}`;
    })
    .join('\n');
}
