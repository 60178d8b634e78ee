// What a gated test needs, as data: the test (through test/helpers.ts's
// `needs` and `gate`) and the test-VM skip guard (vm-skip-guard.ts) evaluate
// the same requirement against the same facts, the guard from the token the
// test wrote into its name. A requirement is a capability answer of /dev/kvm
// or of one VM type's fd, a VM type being offered, a loaded KVM module, or an
// environment fact (network, a tool, not under a sanitizer...), combined with
// not / any / all.
//
// Token grammar (in a test's name as `[req: TERM TERM ...]`, all must hold):
//   TERM := CAP@ON | CAP>=N@ON | CAP&0xMASK@ON     KVM_CHECK_EXTENSION on ON ('kvm' or a VM type): > 0, >= N, all MASK bits
//         | vm-type:T | module:NAME | env:FACT
//         | !TERM | any(TERM,TERM,...) | all(TERM,TERM,...)
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { Cap, type CapName, type VmTypeName, vmTypeNames } from '../../lib/binding/uapi.js';
import { probe } from '../../lib/cli/probe.js';
import { devKvmUsable } from './dev-kvm.js';

/** Facts of the environment that are not KVM capabilities. */
export const ENV_FACTS = {
  network: 'network access (the npm registry)',
  'outside-testvm': 'to run outside the test VM (it boots QEMU itself)',
  unsanitized: 'a build without ASan (which reserves terabytes of address space)',
  'non-root': 'to run as a user other than root',
  'dev-kvm': '/dev/kvm',
  numa: 'a NUMA node in /sys/devices/system/node (a kernel with CONFIG_NUMA)',
  'proc-timers': "/proc/self/timers, the process's POSIX timers (a kernel with CONFIG_CHECKPOINT_RESTORE)",
} as const;
export type EnvFact = keyof typeof ENV_FACTS;

export type Req =
  | { kind: 'cap'; cap: CapName; on: 'kvm' | VmTypeName; min?: number; mask?: number }
  | { kind: 'vm-type'; type: VmTypeName }
  | { kind: 'module'; name: string }
  | { kind: 'env'; fact: EnvFact }
  | { kind: 'tool'; name: string }
  | { kind: 'not'; req: Req }
  | { kind: 'any'; reqs: Req[] }
  | { kind: 'all'; reqs: Req[] };

/** What the running kernel and environment offer: capability answers per fd, VM types that could be created, modules. */
export interface Facts {
  release: string;
  kvm: Partial<Record<CapName, number>>;
  /** One entry per VM type that KVM_CREATE_VM accepted. */
  vms: Partial<Record<VmTypeName, Partial<Record<CapName, number>>>>;
  modules: string[];
  env: Record<EnvFact, boolean>;
  tool: (name: string) => boolean;
}

const capNames = new Set(Object.keys(Cap));
const toolCache = new Map<string, boolean>();
function hasTool(name: string): boolean {
  let ok = toolCache.get(name);
  if (ok === undefined) {
    const r = spawnSync(name, ['--version'], { stdio: 'ignore' });
    ok = r.error === undefined && r.status === 0;
    toolCache.set(name, ok);
  }
  return ok;
}

const rowsToRecord = (rows: readonly { name: string; value: number }[]): Partial<Record<CapName, number>> =>
  Object.fromEntries(rows.map((r) => [r.name.replace(/^KVM_CAP_/, ''), r.value]));

/**
 * The facts, from `kvm-gmem probe`'s report (lib/cli/probe.ts) built in this
 * process on first use (a requirement on a tool or the environment alone
 * opens no /dev/kvm).
 */
export function probeFacts(env: NodeJS.ProcessEnv = process.env): Facts {
  let report: ReturnType<typeof probe> | undefined;
  let vms: Facts['vms'] | undefined;
  const r = (): ReturnType<typeof probe> => (report ??= probe());
  return {
    get release() {
      return r().host.kernelRelease;
    },
    get kvm() {
      return rowsToRecord(r().system?.capabilities ?? []);
    },
    get vms() {
      if (!vms) {
        vms = {};
        for (const vm of r().vms) if (vm.capabilities) vms[vm.type] = rowsToRecord(vm.capabilities);
      }
      return vms;
    },
    get modules() {
      return r().host.kvmModules;
    },
    env: {
      network: env.TESTVM !== '1',
      'outside-testvm': env.TESTVM !== '1',
      unsanitized: env.KVM_GMEM_ADDON === undefined,
      'non-root': process.getuid?.() !== 0,
      'dev-kvm': devKvmUsable(),
      numa: existsSync('/sys/devices/system/node/node0'),
      'proc-timers': existsSync('/proc/self/timers'),
    },
    tool: hasTool,
  };
}

export function evaluate(req: Req, f: Facts): boolean {
  switch (req.kind) {
    case 'cap': {
      const answers = req.on === 'kvm' ? f.kvm : f.vms[req.on];
      const v = answers?.[req.cap] ?? 0;
      if (req.mask !== undefined) return (v & req.mask) === req.mask;
      return v >= (req.min ?? 1);
    }
    case 'vm-type':
      return f.vms[req.type] !== undefined;
    case 'module':
      return f.modules.includes(req.name);
    case 'env':
      return f.env[req.fact];
    case 'tool':
      return f.tool(req.name);
    case 'not':
      return !evaluate(req.req, f);
    case 'any':
      return req.reqs.some((r) => evaluate(r, f));
    case 'all':
      return req.reqs.every((r) => evaluate(r, f));
  }
}

export function serialize(req: Req): string {
  switch (req.kind) {
    case 'cap': {
      const cond = req.mask !== undefined ? `&0x${req.mask.toString(16)}` : req.min !== undefined && req.min !== 1 ? `>=${req.min}` : '';
      return `${req.cap}${cond}@${req.on}`;
    }
    case 'vm-type':
      return `vm-type:${req.type}`;
    case 'module':
      return `module:${req.name}`;
    case 'env':
      return `env:${req.fact}`;
    case 'tool':
      return `tool:${req.name}`;
    case 'not':
      return `!${serialize(req.req)}`;
    case 'any':
    case 'all':
      return `${req.kind}(${req.reqs.map(serialize).join(',')})`;
  }
}

export class TokenError extends Error {}

/** Parses one TERM starting at `s[i]`; returns it and the index after it. */
function parseTerm(s: string, i: number): [Req, number] {
  if (s[i] === '!') {
    const [r, j] = parseTerm(s, i + 1);
    return [{ kind: 'not', req: r }, j];
  }
  const group = /^(any|all)\(/.exec(s.slice(i));
  if (group) {
    const kind = group[1] as 'any' | 'all';
    const reqs: Req[] = [];
    let j = i + group[0].length;
    for (;;) {
      const [r, k] = parseTerm(s, j);
      reqs.push(r);
      if (s[k] === ',') j = k + 1;
      else if (s[k] === ')') return [{ kind, reqs }, k + 1];
      else throw new TokenError(`expected ',' or ')' at ${k} in '${s}'`);
    }
  }
  const m = /^[^\s,()]+/.exec(s.slice(i));
  if (!m) throw new TokenError(`expected a term at ${i} in '${s}'`);
  return [parseAtom(m[0]), i + m[0].length];
}

const vmTypeSet = new Set<string>(vmTypeNames);
function vmTypeOf(t: string, atom: string): VmTypeName {
  if (!vmTypeSet.has(t)) throw new TokenError(`unknown VM type '${t}' in '${atom}'`);
  return t as VmTypeName;
}

function parseAtom(a: string): Req {
  const kv = /^(vm-type|module|env|tool):(.+)$/.exec(a);
  if (kv) {
    const v = kv[2]!;
    switch (kv[1]) {
      case 'vm-type':
        return { kind: 'vm-type', type: vmTypeOf(v, a) };
      case 'module':
        return { kind: 'module', name: v };
      case 'tool':
        return { kind: 'tool', name: v };
      default:
        if (!Object.hasOwn(ENV_FACTS, v)) throw new TokenError(`unknown environment fact '${v}' in '${a}' (known: ${Object.keys(ENV_FACTS).join(', ')})`);
        return { kind: 'env', fact: v as EnvFact };
    }
  }
  const c = /^([A-Z0-9_]+)(?:>=(\d+)|&0x([0-9a-f]+))?@([a-z-]+)$/.exec(a);
  if (!c) throw new TokenError(`cannot read the requirement '${a}'`);
  if (!capNames.has(c[1]!)) throw new TokenError(`unknown capability '${c[1]!}' in '${a}'`);
  const on = c[4] === 'kvm' ? 'kvm' : vmTypeOf(c[4]!, a);
  const req: Req = { kind: 'cap', cap: c[1] as CapName, on };
  if (c[2] !== undefined) req.min = Number(c[2]);
  if (c[3] !== undefined) req.mask = parseInt(c[3], 16);
  return req;
}

/** A token's terms (`A B C` of `[req: A B C]`). */
export function parseToken(body: string): Req[] {
  const out: Req[] = [];
  let i = 0;
  while (i < body.length) {
    if (body[i] === ' ') {
      i++;
      continue;
    }
    const [r, j] = parseTerm(body, i);
    if (j < body.length && body[j] !== ' ') throw new TokenError(`unexpected '${body[j]!}' at ${j} in '${body}'`);
    out.push(r);
    i = j;
  }
  if (out.length === 0) throw new TokenError('an empty [req: ] token');
  return out;
}

export const TOKEN_RE = /\[req: ([^\]]*)\]/g;

/** Every requirement written into a (full) test name, across its describe blocks. */
export function tokensIn(name: string): Req[][] {
  return [...name.matchAll(TOKEN_RE)].map((m) => parseToken(m[1]!));
}
