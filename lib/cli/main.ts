// The `kvm-gmem` command (bin/kvm-gmem.js runs main()). Commands are loaded
// only when asked for, so `--help` works even where the native addon is not
// built.
import { type CliIo, processIo } from './output.js';

export const USAGE = `usage: kvm-gmem <command> [options]
commands:
  probe [--json] [--device PATH]   what this host's KVM offers (system and per-VM-type capabilities)
  selftest [NAME...] [--list]      the guest_memfd conformance suite (the kernel's selftests, ported), KTAP
run 'kvm-gmem <command> --help' for a command's options.`;

/** Runs the command line `argv` (without node and the script); returns the exit status. */
export async function main(argv: string[], io: CliIo = processIo): Promise<number> {
  const [command, ...args] = argv;
  switch (command) {
    case 'probe': {
      let probe: typeof import('./probe.js');
      try {
        probe = await import('./probe.js');
      } catch (e) {
        // The addon is loaded on import: a missing build shows up here.
        io.err(`kvm-gmem: cannot load the native addon (${(e as Error).message.split('\n')[0]}): run npm install, or npx node-gyp rebuild\n`);
        return 2;
      }
      return probe.runProbe(args, io);
    }
    case 'selftest': {
      // Loaded on demand like probe: the tests load the addon.
      const { runSelftest } = await import('./selftest.js');
      return runSelftest(args, io);
    }
    case '--help':
    case '-h':
    case 'help':
      io.out(`${USAGE}\n`);
      return 2;
    case undefined:
      io.err(`${USAGE}\n`);
      return 2;
    default:
      io.err(`kvm-gmem: unknown command '${command}'\n${USAGE}\n`);
      return 2;
  }
}
