// The command-line parsing every driver in clients/ shares (node's util.parseArgs):
// options by name, positionals in order, a usage line and exit status 2 on anything else.
import { parseArgs } from "node:util";

/**
 * @param {string} usage  the usage line printed on a bad command line
 * @param {object} options  util.parseArgs options ({name: {type: "string" | "boolean"}})
 * @param {number} minPositionals  how many positionals the command needs at least
 * @returns {{values: object, positionals: string[]}}
 */
export function parseCommandLine(usage, options = {}, minPositionals = 1) {
  let parsed;
  try {
    parsed = parseArgs({ args: process.argv.slice(2), options, allowPositionals: true, strict: true });
  } catch (error) {
    console.error(`${error.message}\nusage: ${usage}`);
    process.exit(2);
  }
  if (parsed.positionals.length < minPositionals) {
    console.error(`usage: ${usage}`);
    process.exit(2);
  }
  return parsed;
}
