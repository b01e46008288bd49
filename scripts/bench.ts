/**
 * npm run bench -- [internvl bench options]: engine speed against the machine's limits, as JSON.
 * See src/cli/bench.ts (and `internvl bench --help`).
 */
import { benchCommand } from '../src/cli/bench.js';

process.exitCode = await benchCommand(process.argv.slice(2));
